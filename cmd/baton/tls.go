package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/batonproxy/baton/backends"
	"github.com/batonproxy/baton/cmd/internal/config"
	"github.com/batonproxy/baton/handoff"
	"github.com/batonproxy/baton/internal/shmem"
)

// ticketsFile is the name under which the TLS session ticket keys are
// passed to the next generation.
const ticketsFile = "baton.tickets"

// startTLS serves the [[tls]] sections: one server per address,
// terminating TLS with the certificates config.Load read from disk (so an
// upgrade picks up renewed ones) and handing requests to the same proxy.
// The session ticket keys come from the previous generation, so its
// clients resume their sessions here.
func (i *instance) startTLS(errLog *log.Logger) error {
	cfg, h := i.cfg, i.h
	f, err := h.File(ticketsFile)
	if err != nil {
		return err
	}
	if f != nil || len(cfg.TLS) > 0 {
		opts := handoff.TicketOptions{OnRepair: func(r shmem.Repair) { logRepair(i.log, r) }}
		if i.tickets, err = handoff.NewTicketKeys(f, opts); err != nil && f != nil {
			i.log.Error("refused the TLS session ticket keys passed by the previous generation; starting with a fresh key: sessions under the old keys make full handshakes", "err", err)
			i.tickets, err = handoff.NewTicketKeys(nil, opts)
		}
		if err != nil {
			return err
		}
		if err := h.AddFile(ticketsFile, i.tickets.File()); err != nil {
			return err
		}
	}
	for n, t := range cfg.TLS {
		for m, addr := range t.Listen {
			ln, err := h.Listen("tcp", addr)
			if err != nil {
				return &config.Error{File: cfg.Path, Key: fmt.Sprintf("tls[%d].listen[%d]", n, m), Err: err}
			}
			tc := t.ServerConfig()
			i.tickets.Apply(tc)
			// The epoll plane's TLS front accepts on ln itself; on the
			// net/http plane tlsListener begins each handshake.
			ln = &tlsListener{Listener: ln, cfg: tc, handshake: i.cfg.Engine != config.EngineEpoll, observe: i.observeHandshake, wg: &i.bg}
			i.serve(i.newServer(tc, errLog), handoff.KeepAccepting(ln, i.log, ln.Addr().String()))
		}
	}
	return nil
}

// runTickets rotates the session ticket keys while this process serves.
func (i *instance) runTickets(ctx context.Context) {
	if i.tickets == nil {
		return
	}
	i.bg.Add(1)
	go func() {
		defer i.bg.Done()
		if err := i.tickets.Run(ctx); err != nil {
			i.log.Error("TLS session ticket keys are not rotated any more", "err", err)
		}
	}()
}

// soakTLS is the client TLS configuration of `baton soak` for https://
// targets: nil (the system's roots) unless a CA file or --insecure.
func soakTLS(caFile string, insecure bool) (*tls.Config, error) {
	if caFile == "" && !insecure {
		return nil, nil
	}
	c := &tls.Config{InsecureSkipVerify: insecure}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--cacert: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--cacert: no PEM certificate in %s", caFile)
		}
	}
	return c, nil
}

// closeSwitched ends this process's WebSockets to a backend that is about
// to be stopped: its clients get a close frame (1012) now rather than a
// server that waits for them before it stops.
func (i *instance) closeSwitched(backend string) {
	if n := i.px.CloseSwitched(backend); n > 0 {
		i.log.Info("closed upgraded connections before stopping the backend", "backend", backend, "connections", n)
	}
}

// watchStops runs while this process drains after an upgrade: a backend
// that the serving generation is about to stop (stop-start) gets this
// generation's WebSockets ended too, as the serving one ends its own
// (closeSwitched), rather than holding the server's graceful stop. The
// returned function stops the watch and waits for it.
func (i *instance) watchStops() (stop func()) {
	stopC, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopC:
				return
			case <-t.C:
			}
			for _, st := range i.set.Status() {
				if st.Restart == backends.MethodStopStart && (st.State == "draining" || st.State == "restarting") {
					i.closeSwitched(st.Name)
				}
			}
		}
	}()
	return func() {
		close(stopC)
		<-done
	}
}
