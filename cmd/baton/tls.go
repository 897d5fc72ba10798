package main

import (
	"fmt"
	"log"

	"github.com/batonproxy/baton/cmd/internal/config"
	"github.com/batonproxy/baton/handoff"
)

// startTLS serves the [[tls]] sections: one handoff.Server per address,
// terminating TLS with the certificates config.Load read from disk (so an
// upgrade picks up renewed ones) and handing requests to the same proxy.
func (i *instance) startTLS(errLog *log.Logger) error {
	cfg, h := i.cfg, i.h
	for n, t := range cfg.TLS {
		for m, addr := range t.Listen {
			ln, err := h.Listen("tcp", addr)
			if err != nil {
				return &config.Error{File: cfg.Path, Key: fmt.Sprintf("tls[%d].listen[%d]", n, m), Err: err}
			}
			tc := t.ServerConfig()
			srv := &handoff.Server{
				Handler:           i.px,
				ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout,
				IdleTimeout:       cfg.Server.IdleTimeout,
				MaxHeaderBytes:    cfg.Server.MaxHeaderBytes,
				ErrorLog:          errLog,
				TLSConfig:         tc,
			}
			i.servers = append(i.servers, srv)
			i.addrs = append(i.addrs, ln.Addr().String())
			i.bg.Add(1)
			go func() {
				defer i.bg.Done()
				if err := srv.Serve(ln); err != nil {
					i.log.Error("serve", "addr", addr, "err", err)
				}
			}()
		}
	}
	return nil
}
