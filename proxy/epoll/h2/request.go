package h2

import (
	"bytes"
	"net/url"

	"golang.org/x/net/http/httpguts"
)

// Request is a stream's decoded request header list, checked as RFC 9113
// §8 asks: pseudo-fields first, once each, none unknown; names in lower
// case; no connection-specific field; TE only "trailers"; one valid
// Content-Length; :authority and Host agreeing. Its fields live in the
// stream's arena and are valid until the stream's Done.
type Request struct {
	arena  []byte
	fields []field // regular fields, then trailers from ntrail on
	ntrail int

	method, scheme, authority, path span
	npseudo                         uint8 // bits: which pseudo-fields were given

	declLen      int64 // content-length, -1 if none
	host         span  // the Host field's value, if one
	nhost        int
	ncookie      int
	te           bool // a TE field came
	teTrailers   bool // TE: trailers
	expect       bool // Expect lists 100-continue
	idem         bool // Idempotency-Key or X-Idempotency-Key
	trailerDecl  bool // a Trailer field announces trailers
	plainPath    bool // the path passes through net/http unchanged
	endAtHeaders bool // END_STREAM came with the header block
}

// span is a part of the arena.
type span struct{ i, j uint32 }

// field is a name and value in the arena; name is arena[n:v], value
// arena[v:e].
type field struct{ n, v, e uint32 }

const (
	pMethod = 1 << iota
	pScheme
	pAuthority
	pPath
)

func (r *Request) reset() {
	arena, fields := r.arena[:0], r.fields[:0]
	if cap(arena) > 16<<10 {
		arena = nil
	}
	if cap(fields) > 256 {
		fields = nil
	}
	*r = Request{arena: arena, fields: fields, declLen: -1}
}

func (r *Request) of(s span) []byte { return r.arena[s.i:s.j] }

func (r *Request) store(v string) span {
	i := uint32(len(r.arena))
	r.arena = append(r.arena, v...)
	return span{i, uint32(len(r.arena))}
}

// pseudo records a pseudo-field; false if it is unknown or repeated.
func (r *Request) pseudo(name, v string) bool {
	var bit uint8
	var sp *span
	switch name {
	case ":method":
		bit, sp = pMethod, &r.method
	case ":scheme":
		bit, sp = pScheme, &r.scheme
	case ":authority":
		bit, sp = pAuthority, &r.authority
	case ":path":
		bit, sp = pPath, &r.path
	default:
		// :protocol too: extended CONNECT is not advertised.
		return false
	}
	if r.npseudo&bit != 0 {
		return false
	}
	r.npseudo |= bit
	*sp = r.store(v)
	return true
}

// add records a regular field (or a trailer); false if it makes the
// request malformed.
func (r *Request) add(name, v string, trailer bool) bool {
	if trailer {
		if r.ntrail == 0 {
			r.ntrail = len(r.fields)
		}
		if !httpguts.ValidTrailerHeader(name) {
			return false
		}
	} else {
		switch name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return false
		case "te":
			// net/http's rule: one TE, "trailers" or empty.
			if r.te || v != "trailers" && v != "" {
				return false
			}
			r.te, r.teTrailers = true, v == "trailers"
		case "content-length":
			n, ok := parseLength(v)
			if !ok || r.declLen >= 0 && n != r.declLen {
				return false
			}
			r.declLen = n
		case "host":
			r.nhost++
			if r.nhost == 1 {
				r.host = r.store(v)
			}
		case "cookie":
			r.ncookie++
		case "expect":
			if httpguts.HeaderValuesContainsToken([]string{v}, "100-continue") {
				r.expect = true
			}
		case "idempotency-key", "x-idempotency-key":
			r.idem = true
		case "trailer":
			r.trailerDecl = true
		}
	}
	n := uint32(len(r.arena))
	r.arena = append(r.arena, name...)
	vi := uint32(len(r.arena))
	r.arena = append(r.arena, v...)
	r.fields = append(r.fields, field{n, vi, uint32(len(r.arena))})
	return true
}

// complete reports whether the pseudo-fields a request needs are there
// (CONNECT needs :authority, and no :scheme nor :path).
func (r *Request) complete() bool {
	if r.npseudo&pMethod == 0 || r.method.i == r.method.j {
		return false
	}
	if r.isConnect() {
		return r.npseudo == pMethod|pAuthority && r.authority.i != r.authority.j
	}
	if r.npseudo&(pScheme|pPath) != pScheme|pPath || r.path.i == r.path.j {
		return false
	}
	sc := string(r.of(r.scheme))
	return sc == "https" || sc == "http"
}

// check applies net/http's rules on :authority, Host and :path (the
// ones x/net/http2 refuses with PROTOCOL_ERROR too), and the method's
// syntax.
func (r *Request) check() bool {
	if !validMethod(r.of(r.method)) {
		return false
	}
	if r.nhost > 1 {
		return false
	}
	auth := r.Host()
	if r.nhost == 1 && r.npseudo&pAuthority != 0 && r.authority.i != r.authority.j && string(r.of(r.host)) != string(r.of(r.authority)) {
		return false
	}
	if len(auth) > 0 {
		for _, c := range auth {
			if c == '@' {
				return false // userinfo (RFC 9113 §8.3.1)
			}
		}
		for _, c := range auth {
			if !hostByte[c] {
				return false // httpguts.ValidHostHeader
			}
		}
	}
	if r.isConnect() {
		return true
	}
	p := r.of(r.path)
	if validTarget(p) {
		r.plainPath = true
		return true
	}
	if p[0] != '/' && string(p) != "*" {
		return false
	}
	if q := bytes.IndexByte(p, '?'); q >= 0 && bytes.IndexByte(p[q:], ' ') >= 0 {
		// A space stays raw in a query through net/http (the path's
		// become %20), and makes the backend's request line malformed:
		// refused here.
		return false
	}
	_, err := url.ParseRequestURI(string(p))
	return err == nil
}

func (r *Request) isConnect() bool { return string(r.of(r.method)) == "CONNECT" }

func (r *Request) isHead() bool { return string(r.of(r.method)) == "HEAD" }

// Method is the request's :method.
func (r *Request) Method() []byte { return r.of(r.method) }

// Path is the request's :path, as the client sent it (the request URI).
func (r *Request) Path() []byte { return r.of(r.path) }

// Scheme is the request's :scheme.
func (r *Request) Scheme() []byte { return r.of(r.scheme) }

// Host is the request's host: :authority, or the Host field without one
// (as net/http sets Request.Host).
func (r *Request) Host() []byte {
	if r.npseudo&pAuthority != 0 && r.authority.i != r.authority.j {
		return r.of(r.authority)
	}
	if r.nhost == 1 {
		return r.of(r.host)
	}
	return nil
}

// Header returns the first value of the regular field named name (in
// lower case), or nil.
func (r *Request) Header(name string) []byte {
	for _, f := range r.fields[:r.nregular()] {
		if string(r.arena[f.n:f.v]) == name {
			return r.arena[f.v:f.e]
		}
	}
	return nil
}

// Fields calls fn with each regular field, in the order received; the
// slices are valid until the stream's Done.
func (r *Request) Fields(fn func(name, value []byte)) {
	for _, f := range r.fields[:r.nregular()] {
		fn(r.arena[f.n:f.v], r.arena[f.v:f.e])
	}
}

// Trailers calls fn with each trailer field received.
func (r *Request) Trailers(fn func(name, value []byte)) {
	if r.ntrail == 0 {
		return
	}
	for _, f := range r.fields[r.ntrail:] {
		fn(r.arena[f.n:f.v], r.arena[f.v:f.e])
	}
}

func (r *Request) nregular() int {
	if r.ntrail > 0 {
		return r.ntrail
	}
	return len(r.fields)
}

// ContentLength is the declared content-length, or -1.
func (r *Request) ContentLength() int64 { return r.declLen }

// parseLength parses a content-length of plain digits (at most 18: what
// net/http's ParseUint(…, 63) takes, without its 19-digit corner).
func parseLength(v string) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// validMethod: a token (RFC 9110 §9.1), as net/http's Transport checks.
func validMethod(m []byte) bool {
	if len(m) == 0 {
		return false
	}
	for _, c := range m {
		if !httpguts.IsTokenRune(rune(c)) {
			return false
		}
	}
	return true
}

var pchar, hostByte [256]bool

func init() {
	for c := 0; c < 256; c++ {
		hostByte[c] = httpguts.ValidHostHeader(string(rune(c))) && c < 0x80
	}
	for c := 'a'; c <= 'z'; c++ {
		pchar[c], pchar[c-'a'+'A'] = true, true
	}
	for c := '0'; c <= '9'; c++ {
		pchar[c] = true
	}
	// Path and query characters that url.ParseRequestURI and
	// URL.RequestURI leave exactly as they are ('%' is checked apart).
	for _, c := range "-._~!$&'()*+,;=:@/?" {
		pchar[c] = true
	}
}

// maxQueryParams is httputil.ReverseProxy's bound on query parameters
// (url.ParseQuery's); beyond it, or with a ';', it re-encodes the query.
const maxQueryParams = 10000

// validTarget accepts an origin-form target of plain characters and
// well-formed percent escapes that the net/http plane passes on as it is
// (proxy/epoll's rule for HTTP/1.1, which its fuzzer checks).
func validTarget(b []byte) bool {
	if len(b) == 0 || b[0] != '/' {
		return false
	}
	query, params := false, 1
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case c == '?':
			query = true
		case query && c == ';':
			return false
		case query && c == '&':
			if params++; params > maxQueryParams {
				return false
			}
		}
		if c == '%' {
			if i+2 >= len(b) || !isHex(b[i+1]) || !isHex(b[i+2]) {
				return false
			}
			i += 2
			continue
		}
		if !pchar[c] {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// requestURI is what net/http sends as the target of a path that is not
// plain: url.ParseRequestURI, httputil.ReverseProxy's query cleaning,
// URL.RequestURI. It allocates; plain paths never come here.
func requestURI(p string) string {
	u, err := url.ParseRequestURI(p)
	if err != nil {
		return p // check refused it already
	}
	u.RawQuery = cleanQueryParams(u.RawQuery)
	return u.RequestURI()
}

// cleanQueryParams is httputil.ReverseProxy's: a query with a ';' or a
// bad escape is parsed and encoded again.
func cleanQueryParams(s string) string {
	reencode := func(s string) string {
		v, _ := url.ParseQuery(s)
		return v.Encode()
	}
	for i := 0; i < len(s); {
		switch s[i] {
		case ';':
			return reencode(s)
		case '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return reencode(s)
			}
			i += 3
		default:
			i++
		}
	}
	return s
}
