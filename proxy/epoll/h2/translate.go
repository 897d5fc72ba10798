package h2

import (
	"errors"
	"net/textproto"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Framing is how a request body travels to the backend.
type Framing uint8

// Framings.
const (
	BodyNone    Framing = iota // no body
	BodyLength                 // Content-Length: Head.Length bytes, as they come
	BodyChunked                // chunked: the loop frames Body as chunks, then "0\r\n\r\n"
)

// Forward is what the proxy adds to a request.
type Forward struct {
	ClientIP string // appended to X-Forwarded-For
	Backend  string // host:port, the Host of a request that names none (as net/http's Transport)
	TLS      bool   // the client connection is TLS: X-Forwarded-Proto https (whatever :scheme says, as net/http)
}

// Head says how the request AppendRequest wrote travels.
type Head struct {
	// Replay is proxy.Replayable: no body, a safe method or an
	// idempotency key. Such a request is written as proxy.Transport
	// writes it (a pooled connection, no framing, retried); any other is
	// written as net/http's Transport writes it on the fresh connection
	// the net/http plane uses for it (its framing, Connection: close).
	Replay bool
	Body   Framing
	Length int64 // for BodyLength
}

// ErrUnsupported is AppendRequest's error for a request the loops do not
// forward: CONNECT (the loop answers it itself, 501).
var ErrUnsupported = errors.New("h2: CONNECT is not forwarded")

// AppendRequest appends to dst the HTTP/1.1 request header the backend
// gets for the stream's request, as the net/http plane sends it:
// :authority (or Host) as Host, the backend's address when there is
// neither; :path as net/http passes it on (re-encoded where it would be);
// names canonicalized as net/http does; cookies joined with "; " (RFC 9113
// §8.2.3); Expect: 100-continue answered by the engine instead (Stream.
// Continue) and not passed on; TE passed on only as "TE: trailers";
// Forwarded and the client's X-Forwarded-Host and -Proto dropped,
// X-Forwarded-For extended with the client, X-Forwarded-Host and -Proto
// set; the body's framing as the transport in use writes it. A body that
// is open and of unknown length is chunked, except for a method that
// usually has none whose body is known to be empty already (net/http's
// Transport probes such a body). Request trailers are announced (Trailer)
// but not passed on, as through net/http. A plain path allocates nothing.
func (s *Stream) AppendRequest(dst []byte, fw *Forward) ([]byte, Head, error) {
	r := &s.req
	var h Head
	if r.isConnect() {
		return dst, h, ErrUnsupported
	}
	meth := r.Method()
	var cl int64
	switch {
	case r.endAtHeaders:
	case r.declLen >= 0:
		cl = r.declLen
	default:
		cl = -1
	}
	h.Replay = cl == 0 && (replayMethod(meth) || r.idem)
	if cl < 0 && lacksBody(meth) && s.endRecv && s.received == 0 {
		cl = 0 // the probe found it empty
	}
	std := !h.Replay // net/http's Transport
	switch {
	case h.Replay || cl == 0:
	case cl > 0:
		h.Body, h.Length = BodyLength, cl
	default:
		h.Body = BodyChunked
	}

	dst = append(dst, meth...)
	dst = append(dst, ' ')
	if r.plainPath {
		dst = append(dst, r.Path()...)
	} else {
		dst = append(dst, requestURI(string(r.Path()))...)
	}
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	host := r.Host()
	switch {
	case len(host) == 0:
		dst = append(dst, fw.Backend...)
	case std && len(host) > 0 && host[0] == '[':
		dst = append(dst, removeZone(string(host))...)
	default:
		dst = append(dst, host...)
	}
	dst = append(dst, crlf...)

	firstUA := true
	for _, f := range r.fields[:r.nregular()] {
		name, v := r.arena[f.n:f.v], r.arena[f.v:f.e]
		switch string(name) {
		case "host", "content-length", "trailer", "te", "proxy-authenticate", "proxy-authorization",
			"forwarded", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-for", "cookie":
			continue
		case "expect":
			if r.expect {
				continue
			}
		case "user-agent":
			if std {
				// Request.write: the first value alone (Header.Get),
				// trimmed, if it is not empty.
				if firstUA && len(v) > 0 {
					dst = append(dst, "User-Agent: "...)
					dst = append(dst, trimOWS(v)...)
					dst = append(dst, crlf...)
				}
				firstUA = false
				continue
			}
			if len(v) == 0 {
				continue
			}
		}
		dst = appendCanonical(dst, name)
		dst = append(dst, ": "...)
		if std {
			v = trimOWS(v)
		}
		dst = append(dst, v...)
		dst = append(dst, crlf...)
	}
	if r.ncookie > 0 {
		dst = append(dst, "Cookie: "...)
		start, n := len(dst), 0
		for _, f := range r.fields[:r.nregular()] {
			if string(r.arena[f.n:f.v]) != "cookie" {
				continue
			}
			if n > 0 {
				dst = append(dst, "; "...)
			}
			dst = append(dst, r.arena[f.v:f.e]...)
			n++
		}
		if std {
			// One value, trimmed as one (Header.writeSubset).
			v := trimOWS(dst[start:])
			dst = dst[:start+copy(dst[start:], v)]
		}
		dst = append(dst, crlf...)
	}
	if r.teTrailers {
		dst = append(dst, "Te: trailers\r\n"...)
	}
	if std {
		switch {
		case h.Body == BodyChunked:
			dst = append(dst, "Transfer-Encoding: chunked\r\n"...)
			if r.trailerDecl {
				dst = appendTrailerDecl(dst, r)
			}
		case h.Body == BodyLength:
			dst = append(dst, "Content-Length: "...)
			dst = strconv.AppendInt(dst, cl, 10)
			dst = append(dst, crlf...)
		case string(meth) == "POST" || string(meth) == "PUT" || string(meth) == "PATCH":
			// transferWriter.shouldSendContentLength
			dst = append(dst, "Content-Length: 0\r\n"...)
		}
		dst = append(dst, "Connection: close\r\n"...)
	}
	dst = append(dst, "X-Forwarded-For: "...)
	start := len(dst)
	for _, f := range r.fields[:r.nregular()] {
		if string(r.arena[f.n:f.v]) == "x-forwarded-for" {
			dst = append(dst, r.arena[f.v:f.e]...)
			dst = append(dst, ", "...)
		}
	}
	dst = append(dst, fw.ClientIP...)
	if std {
		// The joined value is trimmed as one (Header.writeSubset).
		v := trimOWS(dst[start:])
		dst = dst[:start+copy(dst[start:], v)]
	}
	dst = append(dst, "\r\nX-Forwarded-Host: "...)
	dst = append(dst, host...)
	if fw.TLS {
		dst = append(dst, "\r\nX-Forwarded-Proto: https\r\n\r\n"...)
	} else {
		dst = append(dst, "\r\nX-Forwarded-Proto: http\r\n\r\n"...)
	}
	return dst, h, nil
}

var crlf = []byte("\r\n")

// replayMethod: proxy.Replayable's safe methods.
func replayMethod(m []byte) bool {
	switch string(m) {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	return false
}

// lacksBody: the methods whose body net/http's Transport probes
// (requestMethodUsuallyLacksBody).
func lacksBody(m []byte) bool {
	switch string(m) {
	case "GET", "HEAD", "DELETE", "OPTIONS", "PROPFIND", "SEARCH":
		return true
	}
	return false
}

// appendCanonical appends a lower-case token name as
// textproto.CanonicalMIMEHeaderKey writes it.
func appendCanonical(dst, name []byte) []byte {
	upper := true
	for _, c := range name {
		if upper && 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		dst = append(dst, c)
		upper = c == '-'
	}
	return dst
}

// trimOWS is textproto.TrimString.
func trimOWS(b []byte) []byte {
	for len(b) > 0 && isOWS(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isOWS(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

func isOWS(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// removeZone is net/http's: no IPv6 zone in an outgoing Host.
func removeZone(host string) string {
	i := strings.LastIndex(host, "]")
	if i < 0 {
		return host
	}
	j := strings.LastIndex(host[:i], "%")
	if j < 0 {
		return host
	}
	return host[:j] + host[i:]
}

// validTrailerKeys reports whether the keys the Trailer fields announce
// are all tokens (net/http's Transport checks them).
func (r *Request) validTrailerKeys() bool {
	for _, k := range r.trailerKeys() {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
	}
	return true
}

// trailerKeys are the keys x/net/http2's server takes from the Trailer
// fields (canonical, each once, sorted).
func (r *Request) trailerKeys() []string {
	var keys []string
	for _, f := range r.fields[:r.nregular()] {
		if string(r.arena[f.n:f.v]) != "trailer" {
			continue
		}
		for _, k := range strings.Split(string(r.arena[f.v:f.e]), ",") {
			k = textproto.CanonicalMIMEHeaderKey(textproto.TrimString(k))
			switch k {
			case "Transfer-Encoding", "Trailer", "Content-Length":
				continue
			}
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	return keys
}

// appendTrailerDecl writes the Trailer field net/http's Transport writes
// for the keys x/net/http2's server took from the client's Trailer
// fields (sorted, each once). It allocates; trailers are rare.
func appendTrailerDecl(dst []byte, r *Request) []byte {
	keys := r.trailerKeys()
	if len(keys) == 0 {
		return dst
	}
	dst = append(dst, "Trailer: "...)
	dst = append(dst, strings.Join(keys, ",")...)
	return append(dst, crlf...)
}
