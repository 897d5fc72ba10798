// Command minproxy is a reference for the bench, not a product: a
// deliberately minimal HTTP/1.1 reverse proxy showing how fast a Go proxy on
// the standard runtime (a goroutine per connection, the netpoller) can be
// without net/http.
//
//	minproxy -listen 127.0.0.1:8080 -backend 127.0.0.1:8081
//
// It supports what wrk sends and little else: GET requests without a body,
// keep-alive, responses with a Content-Length (or none for 204 and 304).
// Requests and responses are parsed by hand into reused buffers, without
// maps and without allocating per request. Each request is forwarded over a
// keep-alive backend connection from a LIFO pool, with an X-Forwarded-For
// header. There are no timeouts, no limits and no error handling beyond
// closing the connections concerned; the one concession is that a request
// whose pooled backend connection turns out to be closed (the backend's
// keep-alive timeout) is sent again on another connection, which is safe
// for a GET without a body.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"log"
	"net"
	"sync"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "`address` to listen on")
	backend := flag.String("backend", "", "backend `host:port`")
	flag.Parse()
	if *backend == "" {
		log.Fatal("minproxy: -backend is required")
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	p := &pool{addr: *backend}
	for {
		c, err := ln.Accept()
		if err != nil {
			time.Sleep(10 * time.Millisecond) // e.g. out of file descriptors
			continue
		}
		go serve(c, p)
	}
}

// Buffer sizes: the client side reads small requests and writes responses;
// the backend side writes small requests and reads responses.
const (
	clientReadBuf  = 4 << 10
	clientWriteBuf = 8 << 10
	backendReadBuf = 16 << 10
	backendWrite   = 4 << 10
)

// serve proxies the requests of one client connection, one at a time.
func serve(c net.Conn, p *pool) {
	defer c.Close()
	cr := bufio.NewReaderSize(c, clientReadBuf)
	cw := bufio.NewWriterSize(c, clientWriteBuf)
	ip := []byte("unknown")
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ip = []byte(a.IP.String())
	}
	head := make([]byte, 0, 1024) // the request as sent to the backend
	for {
		var keep, ok bool
		head, keep, ok = readRequest(cr, head[:0], ip)
		if !ok {
			return
		}
		if !exchange(p, head, cw, keep) {
			return
		}
		// Flush unless another (pipelined) request is already buffered.
		if cr.Buffered() == 0 || !keep {
			if cw.Flush() != nil {
				return
			}
		}
		if !keep {
			return
		}
	}
}

// readRequest reads one request head from r and appends what goes to the
// backend to dst: the request line, the end-to-end headers and
// X-Forwarded-For. keep reports whether the client keeps the connection
// open afterwards; ok is false for anything unsupported or malformed.
func readRequest(r *bufio.Reader, dst, ip []byte) (head []byte, keep, ok bool) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return dst, false, false
	}
	line = trimEOL(line)
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return dst, false, false
	}
	method, rest := line[:sp1], line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 {
		return dst, false, false
	}
	target, version := rest[:sp2], rest[sp2+1:]
	if string(method) != "GET" {
		return dst, false, false
	}
	switch string(version) {
	case "HTTP/1.1":
		keep = true
	case "HTTP/1.0":
		keep = false // no HTTP/1.0 keep-alive
	default:
		return dst, false, false
	}
	dst = append(dst, "GET "...)
	dst = append(dst, target...)
	dst = append(dst, " HTTP/1.1\r\n"...)
	sawXFF := false
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return dst, false, false
		}
		line = trimEOL(line)
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return dst, false, false
		}
		name, value := line[:colon], trimSpace(line[colon+1:])
		switch {
		case eqFold(name, "Connection"):
			if hasToken(value, "close") {
				keep = false
			}
			continue
		case eqFold(name, "Keep-Alive"), eqFold(name, "Proxy-Connection"), eqFold(name, "TE"),
			eqFold(name, "Trailer"), eqFold(name, "Upgrade"):
			continue
		case eqFold(name, "Transfer-Encoding"):
			return dst, false, false // a body: not supported
		case eqFold(name, "Content-Length"):
			if n, ok := parseUint(value); !ok || n != 0 {
				return dst, false, false
			}
		case eqFold(name, "X-Forwarded-For"):
			dst = append(dst, "X-Forwarded-For: "...)
			dst = append(dst, value...)
			dst = append(dst, ", "...)
			dst = append(dst, ip...)
			dst = append(dst, "\r\n"...)
			sawXFF = true
			continue
		}
		dst = append(dst, line...)
		dst = append(dst, "\r\n"...)
	}
	if !sawXFF {
		dst = append(dst, "X-Forwarded-For: "...)
		dst = append(dst, ip...)
		dst = append(dst, "\r\n"...)
	}
	dst = append(dst, "\r\n"...)
	return dst, keep, true
}

// exchange sends the request head to the backend and copies the response to
// cw. A pooled connection that fails before any of the response arrived was
// closed by the backend meanwhile: the request goes out again on the next
// one, or on a new connection.
func exchange(p *pool, head []byte, cw *bufio.Writer, clientKeep bool) bool {
	for {
		bc, reused := p.get()
		if bc == nil {
			return false
		}
		_, err := bc.w.Write(head)
		if err == nil {
			err = bc.w.Flush()
		}
		var status []byte
		if err == nil {
			status, err = bc.r.ReadSlice('\n')
		}
		if err != nil {
			bc.c.Close()
			if reused {
				continue
			}
			return false
		}
		ok, backendKeep := relayResponse(bc.r, status, cw, clientKeep)
		if ok && backendKeep {
			p.put(bc)
		} else {
			bc.c.Close()
		}
		return ok
	}
}

// relayResponse copies a response whose status line was read already from
// br to cw, without the hop-by-hop headers. ok is false when the response
// is unsupported or either side failed; backendKeep tells whether the
// backend connection can serve another request.
func relayResponse(br *bufio.Reader, status []byte, cw *bufio.Writer, clientKeep bool) (ok, backendKeep bool) {
	status = trimEOL(status)
	// "HTTP/1.1 200 OK"
	if len(status) < 12 || string(status[:7]) != "HTTP/1." || status[8] != ' ' {
		return false, false
	}
	code, okCode := parseUint(status[9:12])
	if !okCode || code < 200 { // 1xx: not supported
		return false, false
	}
	backendKeep = status[7] == '1'
	noBody := code == 204 || code == 304
	cw.Write(status)
	cw.WriteString("\r\n")
	length := -1
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return false, false
		}
		line = trimEOL(line)
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return false, false
		}
		name, value := line[:colon], trimSpace(line[colon+1:])
		switch {
		case eqFold(name, "Connection"):
			if hasToken(value, "close") {
				backendKeep = false
			}
			continue
		case eqFold(name, "Keep-Alive"), eqFold(name, "Proxy-Connection"), eqFold(name, "Trailer"), eqFold(name, "Upgrade"):
			continue
		case eqFold(name, "Transfer-Encoding"):
			return false, false // Content-Length required
		case eqFold(name, "Content-Length"):
			n, ok := parseUint(value)
			if !ok {
				return false, false
			}
			length = n
		}
		cw.Write(line)
		cw.WriteString("\r\n")
	}
	if !clientKeep {
		cw.WriteString("Connection: close\r\n")
	}
	cw.WriteString("\r\n")
	if noBody {
		length = 0
	}
	if length < 0 {
		return false, false
	}
	for length > 0 {
		if br.Buffered() == 0 {
			if _, err := br.Peek(1); err != nil {
				return false, false
			}
		}
		chunk, _ := br.Peek(min(br.Buffered(), length))
		cw.Write(chunk) // a failed client write shows at the next Flush
		br.Discard(len(chunk))
		length -= len(chunk)
	}
	return true, backendKeep
}

// backendConn is a keep-alive connection to the backend with its buffers.
type backendConn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

// pool holds idle backend connections, most recently used last.
type pool struct {
	addr string
	mu   sync.Mutex
	idle []*backendConn
}

// get returns an idle connection (reused) or dials a new one; nil if the
// dial failed.
func (p *pool) get() (bc *backendConn, reused bool) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		bc = p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return bc, true
	}
	p.mu.Unlock()
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		return nil, false
	}
	return &backendConn{c: c, r: bufio.NewReaderSize(c, backendReadBuf), w: bufio.NewWriterSize(c, backendWrite)}, false
}

func (p *pool) put(bc *backendConn) {
	p.mu.Lock()
	p.idle = append(p.idle, bc)
	p.mu.Unlock()
}

// trimEOL removes a trailing "\n" or "\r\n".
func trimEOL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
	}
	return b
}

// trimSpace removes leading and trailing spaces and tabs.
func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// eqFold reports whether b equals s, ignoring ASCII case.
func eqFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		x, y := b[i], s[i]
		if x == y {
			continue
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// hasToken reports whether the comma-separated list v holds tok, ignoring
// ASCII case.
func hasToken(v []byte, tok string) bool {
	for len(v) > 0 {
		var item []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			item, v = v[:i], v[i+1:]
		} else {
			item, v = v, nil
		}
		if eqFold(trimSpace(item), tok) {
			return true
		}
	}
	return false
}

// parseUint parses a non-empty decimal number of at most 15 digits.
func parseUint(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 15 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}
