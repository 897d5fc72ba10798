package epoll_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batonproxy/baton/proxy"
	"github.com/batonproxy/baton/proxy/epoll"
)

// bodyPlane is plane, also reporting how many connections the epoll
// plane handed over to net/http (always 0 for stdlib).
func bodyPlane(t testing.TB, engine string, p proxy.Pool, cfg proxy.Config) (string, func() int64) {
	t.Helper()
	if engine != "epoll" {
		return plane(t, engine, p, cfg), func() int64 { return 0 }
	}
	s := &epoll.Server{Handler: proxy.New(p, cfg), Loops: 1}
	return serveEpoll(t, s), func() int64 { return epoll.HandedOver(s) }
}

// echoBackend answers /echo with the method, the body's length, framing
// and digest, /early with 413 without reading the body, /slow after a
// signal before reading it.
func echoBackend(release <-chan struct{}) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		fmt.Fprintf(w, "%s %d %q %x", r.Method, len(b), r.TransferEncoding, sha256.Sum256(b))
	})
	mux.HandleFunc("/early", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		<-release
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
	})
	return mux
}

func digest(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

// TestRequestBodies: Content-Length and chunked bodies, pipelined
// requests after them, HTTP/1.0, served by the loop itself (nothing is
// handed over) exactly as through net/http.
func TestRequestBodies(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	chunked := "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			up := backend(t, echoBackend(nil))
			addr, handed := bodyPlane(t, engine, newPool(true, up), proxy.Config{})
			rc := dial(t, addr)
			for _, c := range []struct {
				name, raw, method, want string
			}{
				{"content-length", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", "POST", fmt.Sprintf("POST 5 [] %s", digest([]byte("hello")))},
				{"chunked", chunked, "POST", fmt.Sprintf("POST 11 [\"chunked\"] %s", digest([]byte("hello world")))},
				{"empty chunked", "PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "PUT", fmt.Sprintf("PUT 0 [\"chunked\"] %s", digest(nil))},
				{"no body", "DELETE /d HTTP/1.1\r\nHost: x\r\n\r\n", "DELETE", fmt.Sprintf("DELETE 0 [] %s", digest(nil))},
				{"get with body", "GET /g HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", "GET", fmt.Sprintf("GET 3 [] %s", digest([]byte("abc")))},
				{"big", fmt.Sprintf("PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(big), big), "PUT", fmt.Sprintf("PUT %d [] %s", len(big), digest(big))},
				{"after", "GET /after HTTP/1.1\r\nHost: x\r\n\r\n", "GET", fmt.Sprintf("GET 0 [] %s", digest(nil))},
			} {
				rc.send(t, c.raw)
				resp, body := rc.read(t, c.method)
				if resp.StatusCode != 200 || body != c.want {
					t.Fatalf("%s: got %d %q, want 200 %q", c.name, resp.StatusCode, body, c.want)
				}
			}
			// Pipelined: three bodies and a GET in one write.
			rc.send(t, "POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1"+chunked+"POST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n333GET /4 HTTP/1.1\r\nHost: x\r\n\r\n")
			for i, want := range []string{"POST 1 ", "POST 11 ", "POST 3 ", "GET 0 "} {
				if resp, body := rc.read(t, "POST"); resp.StatusCode != 200 || !strings.HasPrefix(body, want) {
					t.Fatalf("pipelined %d: got %d %q, want %q...", i, resp.StatusCode, body, want)
				}
			}
			if n := handed(); n != 0 {
				t.Errorf("connections handed over to net/http: %d, want 0", n)
			}
			waitUntil(t, 2*time.Second, "in flight back to 0", func() bool { return up.inflight.Load() == 0 })
		})
	}
}

// TestBodyBackpressure: while the backend does not read, the proxy does
// not read the client's body on either (it is not buffered whole), and
// all of it arrives once the backend reads.
func TestBodyBackpressure(t *testing.T) {
	const size = 64 << 20
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			release := make(chan struct{})
			up := backend(t, echoBackend(release))
			addr, _ := bodyPlane(t, engine, newPool(true, up), proxy.Config{})
			rc := dial(t, addr)
			_ = rc.c.SetDeadline(time.Now().Add(60 * time.Second))
			var written atomic.Int64
			sum := sha256.New()
			block := bytes.Repeat([]byte("x"), 64<<10)
			for i := 0; i < size/len(block); i++ {
				sum.Write(block)
			}
			errc := make(chan error, 1)
			go func() {
				if _, err := fmt.Fprintf(rc.c, "POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", size); err != nil {
					errc <- err
					return
				}
				for i := 0; i < size/len(block); i++ {
					n, err := rc.c.Write(block)
					written.Add(int64(n))
					if err != nil {
						errc <- err
						return
					}
				}
				errc <- nil
			}()
			// The writes stall: socket buffers fill and nothing reads them.
			last, stable := int64(-1), 0
			for deadline := time.Now().Add(20 * time.Second); stable < 20; {
				if time.Now().After(deadline) {
					t.Fatalf("the client's writes never stalled (%d bytes written)", written.Load())
				}
				if w := written.Load(); w == last {
					stable++
				} else {
					last, stable = w, 0
				}
				time.Sleep(10 * time.Millisecond)
			}
			if last >= size*3/4 {
				t.Errorf("%d bytes taken from the client while the backend read none", last)
			}
			close(release)
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			resp, body := rc.read(t, "POST")
			if want := fmt.Sprintf("%d %x", size, sum.Sum(nil)); resp.StatusCode != 200 || body != want {
				t.Fatalf("got %d %q, want %q", resp.StatusCode, body, want)
			}
		})
	}
}

// TestBodyEarlyAnswer: a backend that answers before reading the body
// (and closes): the client gets its answer and the connection closes.
func TestBodyEarlyAnswer(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			up := backend(t, echoBackend(nil))
			addr, _ := bodyPlane(t, engine, newPool(true, up), proxy.Config{})
			rc := dial(t, addr)
			go func() {
				fmt.Fprintf(rc.c, "POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", 8<<20)
				rc.c.Write(make([]byte, 8<<20))
			}()
			resp, body := rc.read(t, "POST")
			if resp.StatusCode != 413 || body != "too large\n" {
				t.Fatalf("got %d %q, want 413", resp.StatusCode, body)
			}
			if !resp.Close {
				t.Errorf("the connection stays open with the rest of the body unread")
			}
			waitUntil(t, 2*time.Second, "in flight back to 0", func() bool { return up.inflight.Load() == 0 })
		})
	}
}

// TestBodyClientGone: a client that goes away mid-body; the backend's
// request ends, nothing is left in flight, and the plane serves on.
func TestBodyClientGone(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			got := make(chan error, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, err := io.ReadAll(r.Body)
				got <- err
			}))
			t.Cleanup(srv.Close)
			up := &upstream{name: "b1", addr: srv.Listener.Addr().String(), tr: &http.Transport{}}
			addr, _ := bodyPlane(t, engine, newPool(true, up), proxy.Config{})
			rc := dial(t, addr)
			rc.send(t, "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"+strings.Repeat("y", 5000))
			waitUntil(t, 5*time.Second, "backend got the request", func() bool { return up.inflight.Load() == 1 && len(got) == 0 && srv.Config != nil })
			rc.c.Close()
			select {
			case err := <-got:
				if err == nil {
					t.Errorf("the backend read the whole body of a request cut short")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the backend's request did not end")
			}
			waitUntil(t, 2*time.Second, "in flight back to 0", func() bool { return up.inflight.Load() == 0 })
		})
	}
}

// TestBodyHoldAndRetry: a request with a body waits while no backend is
// ready, and goes to another backend after a connection refused (nothing
// was sent); a bad chunk is a 400 that closes the connection.
func TestBodyHoldAndRetry(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			live := backend(t, echoBackend(nil))
			ln, _ := net.Listen("tcp", "127.0.0.1:0")
			dead := &upstream{name: "dead", addr: ln.Addr().String(), tr: &http.Transport{}}
			ln.Close()
			p := newPool(false, dead, live)
			addr, _ := bodyPlane(t, engine, p, proxy.Config{})
			rc := dial(t, addr)
			rc.send(t, "POST /held HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
			waitUntil(t, 2*time.Second, "request held", func() bool { return true })
			time.Sleep(50 * time.Millisecond) // let it be held (nothing to poll from outside)
			p.setReady(true)
			if resp, body := rc.read(t, "POST"); resp.StatusCode != 200 || body != "POST 5 [] "+digest([]byte("hello")) {
				t.Fatalf("held then retried: %d %q", resp.StatusCode, body)
			}
			rc.send(t, "POST /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n\r\n")
			resp, _ := rc.read(t, "POST")
			if resp.StatusCode != 400 || !resp.Close {
				t.Fatalf("bad chunk: %d close=%v, want 400 and close", resp.StatusCode, resp.Close)
			}
		})
	}
}

// TestExpectContinue: 100 Continue comes from the backend (passed on),
// or from the proxy when the backend sends none in time; a backend that
// answers without it gets no body, and the client's connection closes.
func TestExpectContinue(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			up := backend(t, echoBackend(nil))
			up.tr.ExpectContinueTimeout = time.Second // as backends configure it
			addr, handed := bodyPlane(t, engine, newPool(true, up), proxy.Config{})
			rc := dial(t, addr)
			rc.send(t, "POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
			if resp, _ := rc.read(t, "POST"); resp.StatusCode != 100 {
				t.Fatalf("got %d, want 100 Continue", resp.StatusCode)
			}
			rc.send(t, "hello")
			if resp, body := rc.readFinal(t, "POST"); resp.StatusCode != 200 || body != "POST 5 [] "+digest([]byte("hello")) {
				t.Fatalf("after 100: %d %q", resp.StatusCode, body)
			}
			// Refused before the body.
			rc.send(t, "POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
			resp, _ := rc.read(t, "POST")
			if resp.StatusCode != 413 || !resp.Close {
				t.Fatalf("refused: %d close=%v, want 413 and close", resp.StatusCode, resp.Close)
			}
			if n := handed(); n != 0 {
				t.Errorf("connections handed over to net/http: %d, want 0", n)
			}
		})
	}
}

// TestExpectContinueSilentBackend: a backend that never sends 100
// Continue; the proxy sends it after ExpectContinueTimeout.
func TestExpectContinueSilentBackend(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						buf := make([]byte, 4096)
						var got []byte
						for !bytes.HasSuffix(got, []byte("hello")) {
							n, err := c.Read(buf)
							if err != nil {
								return
							}
							got = append(got, buf[:n]...)
						}
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
					}()
				}
			}()
			up := &upstream{name: "b1", addr: ln.Addr().String(), tr: &http.Transport{ExpectContinueTimeout: time.Second}}
			addr, _ := bodyPlane(t, engine, newPool(true, up), proxy.Config{})
			rc := dial(t, addr)
			start := time.Now()
			rc.send(t, "POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
			if resp, _ := rc.read(t, "POST"); resp.StatusCode != 100 {
				t.Fatalf("got %d, want 100 Continue", resp.StatusCode)
			}
			if d := time.Since(start); d < 900*time.Millisecond {
				t.Errorf("100 Continue after %s, before ExpectContinueTimeout", d)
			}
			rc.send(t, "hello")
			if resp, body := rc.readFinal(t, "POST"); resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("after 100: %d %q", resp.StatusCode, body)
			}
		})
	}
}

// TestHTTP10: an HTTP/1.0 client gets HTTP/1.0 answers, keep-alive only
// when it asks, and a chunked response decoded and delimited by closing.
func TestHTTP10(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			up := backend(t, testBackend())
			addr, handed := bodyPlane(t, engine, newPool(true, up), proxy.Config{})
			rc := dial(t, addr)
			rc.send(t, "GET /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
			resp, body := rc.read(t, "GET")
			if resp.Proto != "HTTP/1.0" || resp.StatusCode != 200 || resp.Close || resp.Header.Get("Connection") != "keep-alive" || body != "GET /a host=x xff=127.0.0.1\n" {
				t.Fatalf("keep-alive: %s %d close=%v %q %q", resp.Proto, resp.StatusCode, resp.Close, resp.Header.Get("Connection"), body)
			}
			rc.send(t, "GET /chunked HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
			resp, body = rc.read(t, "GET")
			if resp.Proto != "HTTP/1.0" || len(resp.TransferEncoding) != 0 || resp.ContentLength != -1 || !resp.Close || body != "part 0\npart 1\npart 2\n" {
				t.Fatalf("chunked: %s te=%v cl=%d close=%v %q", resp.Proto, resp.TransferEncoding, resp.ContentLength, resp.Close, body)
			}
			rc = dial(t, addr)
			rc.send(t, "POST /post HTTP/1.0\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
			resp, body = rc.read(t, "POST")
			if resp.Proto != "HTTP/1.0" || !resp.Close || resp.Header.Get("Connection") != "" || body != "got 3 bytes" {
				t.Fatalf("close: %s close=%v %q %q", resp.Proto, resp.Close, resp.Header.Get("Connection"), body)
			}
			if n := handed(); n != 0 {
				t.Errorf("connections handed over to net/http: %d, want 0", n)
			}
		})
	}
}

// readFinal reads the final response, skipping informational ones: the
// net/http plane may send two 100 Continue (its server's own when the
// proxy reads the body, and the backend's, passed on), which HTTP allows.
func (rc *rawClient) readFinal(t testing.TB, method string) (*http.Response, string) {
	t.Helper()
	for i := 0; i < 10; i++ {
		resp, body := rc.read(t, method)
		if resp.StatusCode >= 200 {
			return resp, body
		}
	}
	t.Fatal("more than 10 informational responses")
	return nil, ""
}
