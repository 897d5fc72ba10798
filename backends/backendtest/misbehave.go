package backendtest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Misbehaving is an HTTP/1.1 server on a loopback port that answers as a
// broken application server might: what it sends depends on the request
// path (see Behaviours). Apache and lighttpd never do these things; an
// application server behind kind "none" or "command" can. It counts the
// requests it read per path.
type Misbehaving struct {
	Addr string // host:port
	URL  string // http://Addr

	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]bool
	hits  map[string]int
	done  chan struct{}
}

// Behaviours lists the paths Misbehaving understands and what each does.
var Behaviours = map[string]string{
	"(any other)":    "200 with the path and a newline as its body",
	"/oversend":      "200 with Content-Length 5 \"HELLO\", then at once a second, unasked-for response \"EVIL\"",
	"/oversend-late": "200 with Content-Length 5 \"HELLO\"; 20 ms later, while the connection is idle, an unasked-for response \"EVIL\"",
	"/garbage":       "a line that is not HTTP, then the connection stays open",
	"/http09":        "an HTTP/0.9-style body with no status line, then close",
	"/bad-status":    "a malformed status line",
	"/stall-headers": "a complete header promising 100 bytes, then nothing until the client goes away",
	"/short-close":   "a header promising 100 bytes, 10 of them, then close",
	"/headers-close": "a header promising 100 bytes, then close at once",
	"/huge-header":   "a 2 MB response header",
	"/many-1xx":      "an endless stream of 100 Continue responses",
}

// StartMisbehaving starts the server; Close stops it.
func StartMisbehaving() (*Misbehaving, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	m := &Misbehaving{Addr: ln.Addr().String(), ln: ln, conns: map[net.Conn]bool{}, hits: map[string]int{}, done: make(chan struct{})}
	m.URL = "http://" + m.Addr
	m.wg.Add(1)
	go m.accept()
	return m, nil
}

func (m *Misbehaving) accept() {
	defer m.wg.Done()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			return
		}
		m.mu.Lock()
		m.conns[c] = true
		m.mu.Unlock()
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			defer func() {
				m.mu.Lock()
				delete(m.conns, c)
				m.mu.Unlock()
				c.Close()
			}()
			m.serve(c)
		}()
	}
}

// Hits is how many requests for path the server has read.
func (m *Misbehaving) Hits(path string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.hits[path]
}

// Close stops the server and closes its connections.
func (m *Misbehaving) Close() {
	close(m.done)
	m.ln.Close()
	m.mu.Lock()
	for c := range m.conns {
		c.Close()
	}
	m.mu.Unlock()
	m.wg.Wait()
}

// wait pauses for d unless the server closes first.
func (m *Misbehaving) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-m.done:
		return false
	}
}

func (m *Misbehaving) serve(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		path := req.URL.Path
		m.mu.Lock()
		m.hits[path]++
		m.mu.Unlock()
		switch path {
		case "/oversend":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHELLOHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
		case "/oversend-late":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHELLO")
			if !m.wait(20 * time.Millisecond) {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
			m.mu.Lock()
			m.hits[path+"#late"]++ // Hits("/oversend-late#late"): sent
			m.mu.Unlock()
		case "/garbage":
			io.WriteString(c, "HELLO THERE, THIS IS NOT HTTP\r\n\r\n")
			_, _ = io.Copy(io.Discard, br)
			return
		case "/http09":
			io.WriteString(c, "<html>an HTTP/0.9 answer</html>\n")
			return
		case "/bad-status":
			io.WriteString(c, "HTTP/1.1 2x0 Maybe\r\nContent-Length: 2\r\n\r\nok")
		case "/stall-headers":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-Stall: yes\r\n\r\n")
			_, _ = io.Copy(io.Discard, br) // until the client (baton) hangs up
			return
		case "/short-close":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
			return
		case "/headers-close":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
			return
		case "/huge-header":
			w := bufio.NewWriter(c)
			w.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n")
			line := "X-Big: " + strings.Repeat("a", 1000) + "\r\n"
			for i := 0; i < 2000; i++ {
				w.WriteString(line)
			}
			w.WriteString("\r\nok")
			if w.Flush() != nil {
				return
			}
		case "/many-1xx":
			for i := 0; i < 100000; i++ {
				if _, err := io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
					return
				}
			}
			return
		default:
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(path)+1, path+"\n")
		}
	}
}
