package h2

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"
)

// testServer serves Conns over real TCP (and TLS) connections on
// loopback, one goroutine driving each as a loop would, with a fake
// backend answering from memory: every request gets 200 and testBody
// once its body is in (consumed as it comes).
type testServer struct {
	ln  net.Listener
	cfg Config
	wg  sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	heads []string // request heads as AppendRequest wrote them
}

var testBody = []byte("hello from the h2 engine, a body of some length for the flow-control tests\n")

func startTestServer(t testing.TB, cfg Config, useTLS bool) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if useTLS {
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{testCert(t)}, NextProtos: []string{"h2"}})
	}
	ts := &testServer{ln: ln, cfg: cfg, conns: map[net.Conn]struct{}{}}
	ts.wg.Add(1)
	go ts.accept()
	t.Cleanup(ts.close)
	return ts
}

func (ts *testServer) addr() string { return ts.ln.Addr().String() }

func (ts *testServer) close() {
	ts.ln.Close()
	ts.mu.Lock()
	for c := range ts.conns {
		c.Close()
	}
	ts.mu.Unlock()
	ts.wg.Wait()
}

func (ts *testServer) accept() {
	defer ts.wg.Done()
	for {
		nc, err := ts.ln.Accept()
		if err != nil {
			return
		}
		ts.mu.Lock()
		ts.conns[nc] = struct{}{}
		ts.mu.Unlock()
		ts.wg.Add(1)
		go func() {
			defer ts.wg.Done()
			defer func() {
				ts.mu.Lock()
				delete(ts.conns, nc)
				ts.mu.Unlock()
				nc.Close()
			}()
			ts.serve(nc)
		}()
	}
}

// exchange is the fake backend's side of one stream.
type exchange struct {
	body []byte // response body left to write
	sent bool   // the header went
}

func (ts *testServer) serve(nc net.Conn) {
	c, err := NewConn(&ts.cfg)
	if err != nil {
		return
	}
	clock := c.now
	buf := make([]byte, c.MaxFrameLen()+32<<10)
	n := 0
	xs := map[*Stream]*exchange{}
	for {
		for out := c.Output(); len(out) > 0; out = c.Output() {
			_ = nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
			w, err := nc.Write(out)
			c.Written(w)
			if err != nil {
				c.Abort()
				ts.events(c, xs)
				return
			}
			ts.events(c, xs) // Written may wake writers
		}
		if c.Closed() {
			return
		}
		dl := time.Time{}
		if d := c.Deadline(); d != 0 {
			dl = time.Now().Add(time.Duration(d - clock()))
		}
		_ = nc.SetReadDeadline(dl)
		m, err := nc.Read(buf[n:])
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			c.Tick(clock())
			ts.events(c, xs)
			continue
		}
		if m == 0 && err != nil {
			c.Abort()
			ts.events(c, xs)
			return
		}
		n += m
		k := c.Feed(buf[:n])
		n = copy(buf, buf[k:n])
		ts.events(c, xs)
	}
}

// events plays the loop and the backend.
func (ts *testServer) events(c *Conn, xs map[*Stream]*exchange) {
	for s, ev := c.Next(); s != nil; s, ev = c.Next() {
		if ev&EventReset != 0 {
			delete(xs, s)
			s.Done()
			continue
		}
		x := xs[s]
		if ev&EventRequest != 0 {
			head, _, err := s.AppendRequest(nil, &Forward{ClientIP: "127.0.0.1", Backend: "backend:80", TLS: true})
			if errors.Is(err, ErrUnsupported) {
				s.WriteHeaders(501, nil, true)
				s.Done()
				continue
			}
			ts.mu.Lock()
			ts.heads = append(ts.heads, string(head))
			ts.mu.Unlock()
			x = &exchange{body: testBody}
			xs[s] = x
			s.Continue()
		}
		if x == nil {
			continue
		}
		if b := s.Body(); len(b) > 0 {
			s.Consume(len(b))
		}
		if !s.BodyDone() {
			continue
		}
		if !x.sent {
			x.sent = true
			h := "Content-Type: text/plain\r\nContent-Length: " + itoa(len(testBody)) + "\r\n"
			s.WriteHeaders(200, []byte(h), s.Request().isHead())
			if s.Request().isHead() {
				delete(xs, s)
				s.Done()
				continue
			}
		}
		k := s.Write(x.body, true)
		x.body = x.body[k:]
		if len(x.body) == 0 {
			delete(xs, s)
			s.Done()
		}
	}
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// testCert is a self-signed certificate for 127.0.0.1.
func testCert(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
