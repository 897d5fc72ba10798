package h2

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/batonproxy/baton/proxy"
)

// The differential fuzzer: the same HTTP/2 request through the engine's
// translation (AppendRequest, the body framed as it says) and through the
// net/http plane (x/net/http2's server, proxy.Handler with its
// httputil.ReverseProxy, proxy.Transport for replayable requests and
// net/http's Transport for the others, as backends.Backend has them) must
// reach the backend alike, in the normal form the recorder writes, or be
// refused by both (nothing reaches the backend).

// normalRequest writes a request as received by a backend: request line,
// Host, sorted header lines, body, framing.
func normalRequest(req *http.Request, body []byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s\nHost: %s\n", req.Method, req.RequestURI, req.Proto, req.Host)
	var lines []string
	for k, vs := range req.Header {
		for i, v := range vs {
			lines = append(lines, fmt.Sprintf("%s[%d]: %s", k, i, v))
		}
	}
	sort.Strings(lines)
	b.WriteString(strings.Join(lines, "\n"))
	fmt.Fprintf(&b, "\nbody %q (length %d, transfer-encoding %q, trailer %v)", body, req.ContentLength, req.TransferEncoding, req.Trailer)
	return b.String()
}

// recorder is a backend that writes down every request in normal form
// and answers 200.
type recorder struct {
	ln net.Listener
	mu sync.Mutex
	rq []string
	wg sync.WaitGroup
}

func newRecorder(t testing.TB) *recorder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{ln: ln}
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(func() {
		ln.Close()
		r.wg.Wait()
	})
	return r
}

func (r *recorder) serve() {
	defer r.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer c.Close()
			br := bufio.NewReader(c)
			for {
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				body, err := io.ReadAll(req.Body)
				if err != nil {
					return
				}
				r.mu.Lock()
				r.rq = append(r.rq, strings.ReplaceAll(normalRequest(req, body), r.ln.Addr().String(), "<backend>"))
				r.mu.Unlock()
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
		}()
	}
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	rq := r.rq
	r.rq = nil
	return rq
}

// fuzzUpstream mirrors backends.Backend: proxy.Transport for replayable
// requests, net/http's Transport without compression for the others.
type fuzzUpstream struct {
	addr     string
	pooled   *proxy.Transport
	fresh    *http.Transport
	inflight atomic.Int64
}

func (u *fuzzUpstream) Name() string { return "rec" }
func (u *fuzzUpstream) Addr() string { return u.addr }
func (u *fuzzUpstream) Transport(replay bool) http.RoundTripper {
	if replay {
		return u.pooled
	}
	return u.fresh
}
func (u *fuzzUpstream) Done(error) { u.inflight.Add(-1) }

type onePool struct{ u *fuzzUpstream }

func (p onePool) Pick(proxy.Upstream) (proxy.Upstream, error) {
	p.u.inflight.Add(1)
	return p.u, nil
}
func (p onePool) Wait(context.Context) error { return nil }
func (p onePool) Unavailable() string        { return "" }

// stdSide is the net/http plane serving HTTP/2 over TLS.
type stdSide struct {
	addr string
	rec  *recorder
	up   *fuzzUpstream
}

func newStdSide(t testing.TB) *stdSide {
	rec := newRecorder(t)
	std := &http.Transport{DisableCompression: true, ExpectContinueTimeout: time.Second}
	fresh := std.Clone()
	fresh.DisableKeepAlives = true
	up := &fuzzUpstream{addr: rec.ln.Addr().String(), fresh: fresh,
		pooled: &proxy.Transport{Addr: rec.ln.Addr().String(), Fallback: std, ResponseHeaderTimeout: 5 * time.Second}}
	t.Cleanup(up.pooled.CloseIdleConnections)
	t.Cleanup(fresh.CloseIdleConnections)
	h := proxy.New(onePool{up}, proxy.Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// As handoff.Server configures net/http.
	srv := &http.Server{Handler: h, MaxHeaderBytes: 64 << 10, ErrorLog: log.New(io.Discard, "", 0),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{testCert(t)}, NextProtos: []string{"h2"}}}
	if err := http2.ConfigureServer(srv, &http2.Server{}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ServeTLS(ln, "", "")
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return &stdSide{addr: ln.Addr().String(), rec: rec, up: up}
}

// fuzzRequest is a decoded fuzz input: header fields, and a body when
// hasBody (sent in one DATA frame with END_STREAM after the HEADERS).
type fuzzRequest struct {
	fields  []hpack.HeaderField
	body    []byte
	hasBody bool
}

// parseFuzz reads "name: value" lines, then (after a NUL) the body.
func parseFuzz(raw []byte) fuzzRequest {
	var fr fuzzRequest
	hdr := raw
	if i := bytes.IndexByte(raw, 0); i >= 0 {
		hdr, fr.body, fr.hasBody = raw[:i], raw[i+1:], true
	}
	for _, ln := range strings.Split(string(hdr), "\n") {
		if ln == "" {
			continue
		}
		i := strings.Index(ln[1:], ":") + 1
		if i <= 0 {
			fr.fields = append(fr.fields, hpack.HeaderField{Name: ln})
			continue
		}
		fr.fields = append(fr.fields, hpack.HeaderField{Name: ln[:i], Value: strings.TrimPrefix(ln[i+1:], " ")})
	}
	return fr
}

// frames writes the request's HEADERS (and DATA) with a Framer.
func (fr fuzzRequest) frames(w io.Writer) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range fr.fields {
		_ = enc.WriteField(f)
	}
	f := http2.NewFramer(w, nil)
	f.AllowIllegalWrites = true
	blk := hb.Bytes()
	first := min(len(blk), 16384)
	_ = f.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:first], EndStream: !fr.hasBody, EndHeaders: first == len(blk)})
	for rest := blk[first:]; len(rest) > 0; {
		n := min(len(rest), 16384)
		_ = f.WriteContinuation(1, n == len(rest), rest[:n])
		rest = rest[n:]
	}
	if fr.hasBody {
		_ = f.WriteData(1, true, fr.body)
	}
}

// exchange sends the request to the net/http plane and returns what
// reached the backend.
func (s *stdSide) exchange(t testing.TB, fr fuzzRequest) []string {
	c, err := tls.Dial("tcp", s.addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	var out bytes.Buffer
	out.WriteString(http2.ClientPreface)
	f := http2.NewFramer(&out, c)
	_ = f.WriteSettings()
	_ = f.WriteSettingsAck()
	fr.frames(&out)
	go func() { _, _ = c.Write(out.Bytes()) }()
	// Read until the stream or the connection ends.
	for {
		fm, err := f.ReadFrame()
		if err != nil {
			break
		}
		if fm.Header().StreamID == 1 && fm.Header().Flags.Has(http2.FlagDataEndStream) && (fm.Header().Type == http2.FrameData || fm.Header().Type == http2.FrameHeaders) {
			break
		}
		if _, ok := fm.(*http2.RSTStreamFrame); ok {
			break
		}
		if _, ok := fm.(*http2.GoAwayFrame); ok {
			break
		}
	}
	c.Close()
	deadline := time.Now().Add(2 * time.Second)
	for s.up.inflight.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	return s.rec.take()
}

// engineExchange sends the request through the engine and its
// translation, and returns the request as the backend would read it.
func engineExchange(t testing.TB, backend string, fr fuzzRequest) []string {
	p := newPeer(t, Config{})
	p.handshake()
	fr.frames(&p.toSrv)
	p.flush()
	var got []string
	for s, ev := p.c.Next(); s != nil; s, ev = p.c.Next() {
		if ev&EventRequest == 0 || !s.BodyDone() && len(s.Body()) == 0 && s.Closed() {
			s.Done()
			continue
		}
		head, h, err := s.AppendRequest(nil, &Forward{ClientIP: "127.0.0.1", Backend: backend, TLS: true})
		if err != nil {
			s.Done()
			continue
		}
		if !s.BodyDone() && !s.Closed() {
			p.flush() // all was sent at once
		}
		if s.Closed() && !s.BodyDone() {
			s.Done()
			continue // reset while its body came: nothing complete reaches the backend
		}
		msg := head
		switch h.Body {
		case BodyLength:
			msg = append(msg, s.Body()...)
		case BodyChunked:
			if b := s.Body(); len(b) > 0 {
				msg = fmt.Appendf(msg, "%x\r\n%s\r\n", len(b), b)
			}
			msg = append(msg, "0\r\n\r\n"...)
		}
		s.Consume(len(s.Body()))
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(msg)))
		if err != nil {
			t.Fatalf("the backend cannot read what the engine wrote: %v\n%q", err, msg)
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			t.Fatalf("the backend cannot read the body the engine wrote: %v\n%q", err, msg)
		}
		got = append(got, strings.ReplaceAll(normalRequest(req, body), backend, "<backend>"))
		s.WriteHeaders(200, nil, true)
		s.Done()
	}
	return got
}

// FuzzDifferential: see above. Inputs are header lines ("name: value",
// pseudo-fields included), then optionally a NUL and a body.
func FuzzDifferential(f *testing.F) {
	for _, seed := range fuzzSeeds {
		f.Add([]byte(seed))
	}
	std := newStdSide(f)
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) > 8192 {
			return
		}
		fr := parseFuzz(raw)
		if divergent(fr) {
			return
		}
		e := engineExchange(t, std.rec.ln.Addr().String(), fr)
		s := std.exchange(t, fr)
		if strings.Join(e, "\n--\n") != strings.Join(s, "\n--\n") {
			t.Errorf("input %q:\nat the backend through the engine:\n%s\nthrough net/http:\n%s", raw, strings.Join(e, "\n--\n"), strings.Join(s, "\n--\n"))
		}
	})
}

// divergent reports a request the engine refuses by design where
// net/http passes it on: CONNECT (ErrUnsupported), and a content-length
// that is not plain digits (at most 18) or that disagrees with another
// (malformed, RFC 9113 §8.1.1; x/net/http2 takes the first value, or 0
// for an unparsable one, and then drops the body), or a content-length
// above 0 on a request that ends with its HEADERS, or of 0 with DATA
// after it (malformed too; x/net/http2 ignores content-length then, or
// forwards the request without its body).
func divergent(fr fuzzRequest) bool {
	cl := ""
	for _, f := range fr.fields {
		switch {
		case f.Name == ":method" && f.Value == "CONNECT":
			return true
		case f.Name == "content-length":
			if _, ok := parseLength(f.Value); !ok || cl != "" && f.Value != cl {
				return true
			}
			cl = f.Value
		}
	}
	n, _ := parseLength(cl)
	return !fr.hasBody && n > 0 || cl != "" && n == 0 && len(fr.body) > 0
}

const base = ":method: GET\n:scheme: https\n:authority: example.com\n:path: /\n"

var fuzzSeeds = []string{
	base,
	base + "user-agent: curl/8\naccept: */*\n",
	":method: GET\n:scheme: https\n:path: /no/authority\n",
	":method: GET\n:scheme: https\n:path: /host\nhost: h.example\n",
	":method: GET\n:scheme: http\n:authority: example.com\n:path: /plain-scheme\n",
	":method: GET\n:scheme: https\n:authority: example.com\n:path: /a%20b/%zz?q=1;2\n",
	":method: GET\n:scheme: https\n:authority: example.com\n:path: /?a=b&c=%zz\n",
	":method: OPTIONS\n:scheme: https\n:authority: example.com\n:path: *\n",
	base + "cookie: a=1\ncookie: b=2\ncookie: c=3\n",
	base + "cookie:  a=1 \n",
	base + "x-forwarded-for: 10.0.0.1\nx-forwarded-for: 10.0.0.2\nforwarded: for=x\nx-forwarded-host: evil\nx-forwarded-proto: http\n",
	base + "te: trailers\n",
	base + "te: \n",
	base + "user-agent: \nuser-agent: second\n",
	base + "proxy-authorization: basic x\nproxy-authenticate: y\n",
	base + "expect: 100-continue\n\x00",
	base + "x-spaces:  padded  \n",
	base + "x-obs: caf\xc3\xa9\n",
	base + "idempotency-key: 1\n",
	":method: POST\n:scheme: https\n:authority: example.com\n:path: /post\n",
	":method: POST\n:scheme: https\n:authority: example.com\n:path: /post\n\x00hello",
	":method: POST\n:scheme: https\n:authority: example.com\n:path: /post\ncontent-length: 5\n\x00hello",
	":method: POST\n:scheme: https\n:authority: example.com\n:path: /post\ncontent-length: 0\n\x00",
	":method: PUT\n:scheme: https\n:authority: example.com\n:path: /put\ntrailer: x-sum, x-b\n\x00data",
	":method: DELETE\n:scheme: https\n:authority: example.com\n:path: /del\n",
	":method: DELETE\n:scheme: https\n:authority: example.com\n:path: /del\n\x00",
	":method: GET\n:scheme: https\n:authority: example.com\n:path: /getbody\n\x00xyz",
	":method: HEAD\n:scheme: https\n:authority: example.com\n:path: /head\n",
	":method: PATCH\n:scheme: https\n:authority: example.com\n:path: /patch\nidempotency-key: k\n",
	":method: CUSTOM\n:scheme: https\n:authority: example.com\n:path: /custom\n",
	":method: GET\n:scheme: https\n:authority: [::1%25eth0]:443\n:path: /zone\n",
	":method: GET\n:scheme: https\n:authority: a@b\n:path: /userinfo\n",
	base + "connection: close\n",
	base + "content-length: x\n",
	base + "X-Upper: 1\n",
}
