package epoll

import (
	"bytes"
	"strconv"
)

// Outcomes of parseRequest.
const (
	parseOK       = iota // a request the loop serves
	parseMore            // the header is not complete yet
	parseHandOver        // net/http must see it (it serves it or refuses it)
)

// span is a part of the header block.
type span struct{ i, j int }

func (s span) of(b []byte) []byte { return b[s.i:s.j] }

// Request body framings.
const (
	reqNoBody  = iota
	reqLength  // Content-Length bytes
	reqChunked // Transfer-Encoding: chunked
)

// request is a parsed request header: what the loop needs, as offsets into
// the header block it came from.
type request struct {
	n       int // bytes of the header block, final CRLF CRLF included
	lineEnd int // end of the request line
	head    bool
	close   bool // the connection closes after the response
	v10     bool // an HTTP/1.0 request
	keep10  bool // HTTP/1.0 with Connection: keep-alive
	expect  bool // Expect: 100-continue, with a body
	replay  bool // proxy.Replayable: pooled connection, retried
	body    int  // reqNoBody, reqLength, reqChunked
	length  int64
	meth    span
	tgt     span
	hostv   span
	ref, ua span
}

func (r *request) method(b []byte) []byte    { return r.meth.of(b) }
func (r *request) target(b []byte) []byte    { return r.tgt.of(b) }
func (r *request) host(b []byte) []byte      { return r.hostv.of(b) }
func (r *request) referer(b []byte) []byte   { return r.ref.of(b) }
func (r *request) userAgent(b []byte) []byte { return r.ua.of(b) }

// maxXFF bounds the X-Forwarded-For lines the loop itself merges.
const maxXFF = 8

// parseRequest parses the request header at the start of b and, for a
// request the loop serves, appends the request to send to the backend to
// out, as the net/http plane would send it: the client's Host; hop-by-hop
// headers dropped; X-Forwarded-For with the client appended (ip);
// X-Forwarded-Host and X-Forwarded-Proto set; Forwarded dropped.
//
// A request with a body, or one that is not replayable (proxy.Replayable),
// is written as net/http's Transport writes it on the fresh connection
// the net/http plane uses for it: the body's framing as Content-Length
// (normalized) or Transfer-Encoding: chunked (the body is re-chunked as it
// is sent), Content-Length: 0 for a POST, PUT or PATCH without one, and
// Connection: close. A replayable one is written as proxy.Transport
// writes it (no framing headers).
//
// The loop serves a deliberately narrow subset: GET, HEAD, POST, PUT,
// PATCH, DELETE or OPTIONS, an origin-form target of plain characters,
// HTTP/1.1 or HTTP/1.0 (with a Host), CRLF line endings, token header
// names, values without control characters, exactly one valid Host, at
// most one Content-Length of plain digits, or one Transfer-Encoding that
// is exactly chunked on a POST, PUT or PATCH over HTTP/1.1 (never both),
// Expect only as 100-continue over HTTP/1.1, no Upgrade, no Trailer,
// Connection with only close and keep-alive. Anything else, malformed or
// merely unusual, is handed over to net/http, which is then the one that
// accepts or refuses it: the two planes cannot disagree on what a request
// means.
func parseRequest(b []byte, maxHeader int, out []byte, ip string, https bool) (request, []byte, int) {
	var r request
	end := bytes.Index(b, crlfcrlf)
	if end < 0 {
		if len(b) >= maxHeader || hasBareLF(b) {
			return r, out, parseHandOver
		}
		return r, out, parseMore
	}
	r.n = end + 4
	if r.n > maxHeader {
		return r, out, parseHandOver
	}
	hdr := b[:r.n]
	if hasBareLF(hdr) {
		return r, out, parseHandOver
	}
	// Request line.
	le := bytes.Index(hdr, crlf)
	r.lineEnd = le
	line := hdr[:le]
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return r, out, parseHandOver
	}
	meth := line[:sp1]
	switch string(meth) {
	case "GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH":
	case "HEAD":
		r.head = true
	default:
		return r, out, parseHandOver
	}
	r.meth = span{0, sp1}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 || !validTarget(rest[:sp2]) {
		return r, out, parseHandOver
	}
	switch string(rest[sp2+1:]) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		r.v10 = true
	default:
		return r, out, parseHandOver
	}
	r.tgt = span{sp1 + 1, sp1 + 1 + sp2}

	// Header lines: check them all first, then write.
	var (
		hosts     int
		xff       [maxXFF]span
		nxff      int
		connClose bool
		connKeep  bool
		nconn     int
		ncl, nte  int
		clv, tev  span
		expect    bool
		idem      bool
	)
	for p := le + 2; p < end; {
		e := p + bytes.Index(hdr[p:], crlf)
		ln := hdr[p:e]
		colon := bytes.IndexByte(ln, ':')
		if colon <= 0 || !validToken(ln[:colon]) {
			return r, out, parseHandOver // also obs-fold: a line starting with SP or HT
		}
		vs, ve := p+colon+1, e
		for vs < ve && (hdr[vs] == ' ' || hdr[vs] == '\t') {
			vs++
		}
		for ve > vs && (hdr[ve-1] == ' ' || hdr[ve-1] == '\t') {
			ve--
		}
		if !validValue(hdr[vs:ve]) {
			return r, out, parseHandOver
		}
		switch kind := headerKind(ln[:colon]); kind {
		case hHandOver:
			return r, out, parseHandOver
		case hHost:
			hosts++
			r.hostv = span{vs, ve}
		case hConnection:
			c, k, ok := connectionTokens(hdr[vs:ve])
			if !ok {
				return r, out, parseHandOver
			}
			connClose, connKeep = connClose || c, connKeep || k
			nconn++
		case hContentLength:
			ncl++
			clv = span{vs, ve}
		case hTransferEncoding:
			nte++
			tev = span{vs, ve}
		case hExpect:
			if expect || !eqFold(hdr[vs:ve], "100-continue") {
				return r, out, parseHandOver // net/http answers 417
			}
			expect = true
		case hIdempotencyKey:
			idem = true
		case hXFF:
			if nxff == maxXFF {
				return r, out, parseHandOver
			}
			xff[nxff] = span{vs, ve}
			nxff++
		case hReferer:
			r.ref = span{vs, ve}
		case hUserAgent:
			r.ua = span{vs, ve}
		}
		p = e + 2
	}
	if hosts != 1 || r.hostv.i == r.hostv.j || !validHost(r.hostv.of(hdr)) {
		return r, out, parseHandOver
	}
	switch {
	case nte > 0:
		// Chunked only, alone, on a method that usually has a body (for
		// the others net/http's Transport probes the body with a timer).
		if nte > 1 || ncl > 0 || r.v10 || !eqFold(tev.of(hdr), "chunked") || !bodyMethod(meth) {
			return r, out, parseHandOver
		}
		r.body, r.length = reqChunked, -1
	case ncl > 1:
		return r, out, parseHandOver
	case ncl == 1:
		n, ok := parseLength(clv.of(hdr))
		if !ok {
			return r, out, parseHandOver
		}
		if n > 0 {
			r.body, r.length = reqLength, n
		}
	}
	if expect {
		if r.v10 {
			return r, out, parseHandOver
		}
		r.expect = r.body != reqNoBody
	}
	r.replay = r.body == reqNoBody && (r.head || string(meth) == "GET" || string(meth) == "OPTIONS" || idem)
	if r.v10 {
		if nconn > 1 || connKeep && connClose {
			return r, out, parseHandOver // net/http reads the first line only for keep-alive
		}
		r.keep10 = connKeep
		r.close = !r.keep10
	} else {
		r.close = connClose
	}

	out = append(out, meth...)
	out = append(out, ' ')
	out = append(out, r.tgt.of(hdr)...)
	out = append(out, " HTTP/1.1\r\nHost: "...)
	out = append(out, r.hostv.of(hdr)...)
	out = append(out, crlf...)
	for p := le + 2; p < end; {
		e := p + bytes.Index(hdr[p:], crlf)
		ln := hdr[p:e]
		colon := bytes.IndexByte(ln, ':')
		vs, ve := p+colon+1, e
		for vs < ve && (hdr[vs] == ' ' || hdr[vs] == '\t') {
			vs++
		}
		for ve > vs && (hdr[ve-1] == ' ' || hdr[ve-1] == '\t') {
			ve--
		}
		p = e + 2
		switch headerKind(ln[:colon]) {
		case hHost, hConnection, hXFF, hDrop, hContentLength, hTransferEncoding:
			continue
		case hUserAgent:
			if vs == ve {
				continue // net/http's client sends no empty User-Agent
			}
		}
		out = append(out, ln[:colon]...)
		out = append(out, ": "...)
		out = append(out, hdr[vs:ve]...)
		out = append(out, crlf...)
	}
	if !r.replay {
		// net/http's Transport on a fresh connection: the framing it
		// writes, and Connection: close.
		switch {
		case r.body == reqChunked:
			out = append(out, "Transfer-Encoding: chunked\r\n"...)
		case r.body == reqLength:
			out = append(out, "Content-Length: "...)
			out = strconv.AppendInt(out, r.length, 10)
			out = append(out, crlf...)
		case bodyMethod(meth):
			out = append(out, "Content-Length: 0\r\n"...)
		}
		out = append(out, "Connection: close\r\n"...)
	}
	out = append(out, "X-Forwarded-For: "...)
	for i := 0; i < nxff; i++ {
		out = append(out, xff[i].of(hdr)...)
		out = append(out, ", "...)
	}
	out = append(out, ip...)
	out = append(out, "\r\nX-Forwarded-Host: "...)
	out = append(out, r.hostv.of(hdr)...)
	if https {
		out = append(out, "\r\nX-Forwarded-Proto: https\r\n\r\n"...)
	} else {
		out = append(out, "\r\nX-Forwarded-Proto: http\r\n\r\n"...)
	}
	return r, out, parseOK
}

var (
	crlf     = []byte("\r\n")
	crlfcrlf = []byte("\r\n\r\n")
)

// hasBareLF reports whether b has a LF not preceded by CR, or a CR not
// followed by LF (net/http reads such lines its own way).
func hasBareLF(b []byte) bool {
	for i, c := range b {
		switch c {
		case '\n':
			if i == 0 || b[i-1] != '\r' {
				return true
			}
		case '\r':
			if i+1 < len(b) && b[i+1] != '\n' {
				return true
			}
		}
	}
	return false
}

// Header kinds that matter to the loop.
const (
	hOther = iota
	hHost
	hConnection
	hXFF
	hReferer
	hUserAgent
	hDrop     // removed, as the net/http plane does (Forwarded, X-Forwarded-Host/Proto)
	hHandOver // changes how the request is framed or forwarded
	hContentLength
	hTransferEncoding
	hExpect
	hIdempotencyKey // Idempotency-Key or X-Idempotency-Key: replayable
)

func headerKind(name []byte) int {
	switch len(name) {
	case 2:
		if eqFold(name, "te") {
			return hHandOver
		}
	case 4:
		if eqFold(name, "host") {
			return hHost
		}
	case 5:
		if eqFold(name, "close") {
			return hHandOver
		}
	case 6:
		if eqFold(name, "expect") {
			return hExpect
		}
	case 7:
		if eqFold(name, "upgrade") || eqFold(name, "trailer") {
			return hHandOver
		}
		if eqFold(name, "referer") {
			return hReferer
		}
	case 9:
		if eqFold(name, "forwarded") {
			return hDrop
		}
	case 10:
		if eqFold(name, "connection") {
			return hConnection
		}
		if eqFold(name, "keep-alive") || eqFold(name, "user-agent") {
			if name[0]|0x20 == 'k' {
				return hHandOver
			}
			return hUserAgent
		}
	case 14:
		if eqFold(name, "content-length") {
			return hContentLength
		}
	case 15:
		if eqFold(name, "x-forwarded-for") {
			return hXFF
		}
		if eqFold(name, "idempotency-key") {
			return hIdempotencyKey
		}
	case 16:
		if eqFold(name, "proxy-connection") || eqFold(name, "x-forwarded-host") {
			if name[0]|0x20 == 'p' {
				return hHandOver
			}
			return hDrop
		}
	case 17:
		if eqFold(name, "transfer-encoding") || eqFold(name, "x-forwarded-proto") {
			if name[0]|0x20 == 't' {
				return hTransferEncoding
			}
			return hDrop
		}
		if eqFold(name, "x-idempotency-key") {
			return hIdempotencyKey
		}
	case 18:
		if eqFold(name, "proxy-authenticate") {
			return hHandOver
		}
	case 19:
		if eqFold(name, "proxy-authorization") {
			return hHandOver
		}
	}
	return hOther
}

// eqFold compares an ASCII header name with a lower-case one.
func eqFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// connectionTokens reports whether a Connection value says close and
// keep-alive, and whether it names nothing but those (anything else names
// headers to drop: net/http's business).
func connectionTokens(v []byte) (close, keep, ok bool) {
	for len(v) > 0 {
		i := bytes.IndexByte(v, ',')
		t := v
		if i >= 0 {
			t, v = v[:i], v[i+1:]
		} else {
			v = nil
		}
		t = bytes.Trim(t, " \t")
		switch {
		case len(t) == 0:
		case eqFold(t, "close"):
			close = true
		case eqFold(t, "keep-alive"):
			keep = true
		default:
			return false, false, false
		}
	}
	return close, keep, true
}

// bodyMethod reports whether m is a method net/http's Transport sends a
// chunked body for without probing it, and Content-Length: 0 for when it
// has none.
func bodyMethod(m []byte) bool {
	switch string(m) {
	case "POST", "PUT", "PATCH":
		return true
	}
	return false
}

// maxLengthDigits bounds a Content-Length the loop parses itself (net/http
// accepts up to 2^63-1; longer ones are handed over).
const maxLengthDigits = 18

// parseLength parses a Content-Length value of plain digits.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > maxLengthDigits {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

var tchar, pchar [256]bool

func init() {
	for c := 'a'; c <= 'z'; c++ {
		tchar[c], tchar[c-'a'+'A'] = true, true
		pchar[c], pchar[c-'a'+'A'] = true, true
	}
	for c := '0'; c <= '9'; c++ {
		tchar[c], pchar[c] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		tchar[c] = true
	}
	// Path and query characters that url.ParseRequestURI and
	// URL.RequestURI leave exactly as they are ('%' is checked apart).
	for _, c := range "-._~!$&'()*+,;=:@/?" {
		pchar[c] = true
	}
}

func validToken(b []byte) bool {
	for _, c := range b {
		if !tchar[c] {
			return false
		}
	}
	return len(b) > 0
}

// validValue: no control characters but HT (obs-text is allowed), as
// httpguts.ValidHeaderFieldValue.
func validValue(b []byte) bool {
	for _, c := range b {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// maxQueryParams is httputil.ReverseProxy's bound on query parameters; a
// query with more, or with a ';', is re-encoded by it.
const maxQueryParams = 10000

// validTarget accepts an origin-form target of plain characters and
// well-formed percent escapes that the net/http plane passes on as it is.
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

// validHost accepts a reg-name or IPv4 host with an optional port: the
// plain subset of what httpguts.ValidHostHeader accepts.
func validHost(b []byte) bool {
	for _, c := range b {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-' || c == '.' || c == ':' || c == '_':
		default:
			return false
		}
	}
	return len(b) > 0
}
