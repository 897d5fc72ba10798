package main

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/batonproxy/baton/cmd/internal/config"
	"github.com/batonproxy/baton/cmd/internal/metrics"
)

// tlsListener wraps a TLS listener's connections in sniffConns, for the
// handshake counters. On the net/http plane (handshake set) it also
// yields each connection as a *tls.Conn whose handshake it has begun on a
// goroutine of its own, so that it sees the handshake's result. net/http,
// which calls Handshake as it serves the connection, waits for that
// handshake and gets the same result, under its own deadline (the
// handshake timeout it sets on the connection): it serves as it does
// behind tls.NewListener. The epoll plane's TLS front does the handshake
// and reports it (epoll.Server.OnHandshake).
type tlsListener struct {
	net.Listener
	cfg       *tls.Config // with handshake
	handshake bool
	observe   func(c net.Conn, resumed bool, err error)
	wg        *sync.WaitGroup // the handshakes: they end with their connection's deadline or close
}

func (l *tlsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	sc := &sniffConn{Conn: c}
	sc.sniffing.Store(true)
	if !l.handshake {
		return sc, nil
	}
	tc := tls.Server(sc, l.cfg)
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		err := tc.HandshakeContext(context.Background())
		l.observe(sc, err == nil && tc.ConnectionState().DidResume, err)
	}()
	return tc, nil
}

// sniffConn keeps the last bytes a client sent until its handshake is
// over, so that a plaintext alert that ended it can be read
// (metrics.TLSAlertReason). After the handshake a Read costs one atomic
// load more.
type sniffConn struct {
	net.Conn
	sniffing atomic.Bool
	mu       sync.Mutex
	tail     [7]byte // a plaintext alert record: 21, 3, x, 0, 2, level, description
	n        int
}

func (c *sniffConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.sniffing.Load() {
		c.mu.Lock()
		for _, b := range p[max(0, n-len(c.tail)):n] {
			copy(c.tail[:], c.tail[1:])
			c.tail[len(c.tail)-1] = b
			c.n++
		}
		c.mu.Unlock()
	}
	return n, err
}

// SyscallConn is the connection's: the epoll plane takes its descriptor.
func (c *sniffConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, syscall.EINVAL
	}
	return sc.SyscallConn()
}

// done stops the sniffing and returns the description of the plaintext
// alert the client's last bytes were, if they were one.
func (c *sniffConn) done() (desc uint8, ok bool) {
	c.sniffing.Store(false)
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.tail
	if c.n < len(t) || t[0] != 21 || t[1] != 3 || t[3] != 0 || t[4] != 2 {
		return 0, false
	}
	return t[6], true
}

// observeHandshake counts a TLS handshake of either plane.
func (i *instance) observeHandshake(c net.Conn, resumed bool, err error) {
	var desc uint8
	alert := false
	if sc, ok := c.(*sniffConn); ok {
		desc, alert = sc.done()
	}
	t := i.mtab.Load()
	if err == nil {
		t.RecordHandshake(resumed)
		return
	}
	r := metrics.TLSReason(err)
	if r == metrics.TLSOther && alert {
		r = metrics.TLSAlertReason(desc)
	}
	t.RecordHandshakeFailure(r)
}

// certificates lists the certificates cfg serves, once each, for the
// expiry gauge.
func certificates(cfg *config.Config) []metrics.CertLive {
	var out []metrics.CertLive
	seen := map[string]bool{}
	for _, t := range cfg.TLS {
		for _, c := range t.Certificates {
			leaf := c.Cert.Leaf
			if leaf == nil || seen[c.CertFile] {
				continue
			}
			seen[c.CertFile] = true
			name := leaf.Subject.CommonName
			if name == "" && len(leaf.DNSNames) > 0 {
				name = leaf.DNSNames[0]
			}
			out = append(out, metrics.CertLive{File: c.CertFile, Subject: name, NotAfter: leaf.NotAfter})
		}
	}
	return out
}
