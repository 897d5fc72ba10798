package accesslog

import (
	"fmt"
	"net"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/batonproxy/baton/proxy"
)

// Format is an access log line format.
type Format uint8

// Formats.
const (
	Combined Format = iota // NCSA Combined, as Apache's "combined" LogFormat
	Extended               // Combined, then baton's fields as key=value
	JSON                   // one JSON object per line
)

// ParseFormat reads a format name: combined, extended or json.
func ParseFormat(s string) (Format, error) {
	switch s {
	case "", "combined":
		return Combined, nil
	case "extended":
		return Extended, nil
	case "json":
		return JSON, nil
	}
	return 0, fmt.Errorf("%q: want combined, extended or json", s)
}

func (f Format) String() string {
	switch f {
	case Extended:
		return "extended"
	case JSON:
		return "json"
	}
	return "combined"
}

// Extra is what the process adds to a request's Exchange.
type Extra struct {
	Generation int
	// Draining: this process had stopped accepting (replaced or stopping)
	// when the request ended.
	Draining bool
	// DrainCut: the drain deadline had passed; a request cut short then
	// ends "drained" rather than "client_aborted".
	DrainCut bool
}

// Term is the termination cause written for e: its Termination, except a
// request cut by the drain deadline, which is "drained".
func Term(e *proxy.Exchange, x Extra) string {
	if x.DrainCut && e.Term == proxy.TermClientAborted {
		return "drained"
	}
	return e.Term.String()
}

// status is the status written: what the client got, or 499 (nginx's
// "client closed request") when the client left before any status.
func status(e *proxy.Exchange) int {
	if e.Status == 0 && e.Term == proxy.TermClientAborted {
		return 499
	}
	return e.Status
}

const clfTime = "02/Jan/2006:15:04:05 -0700"

// AppendLine appends e's line, ending in a newline, to b.
func AppendLine(b []byte, f Format, e *proxy.Exchange, x Extra) []byte {
	if f == JSON {
		return appendJSON(b, e, x)
	}
	b = appendCombined(b, e)
	if f == Extended {
		b = append(b, " backend="...)
		if e.Backend == "" {
			b = append(b, '-')
		} else {
			b = appendEscaped(b, e.Backend)
		}
		b = append(b, " held="...)
		b = appendSeconds(b, e.Held)
		b = append(b, " upstream="...)
		b = appendSeconds(b, e.Upstream)
		b = append(b, " total="...)
		b = appendSeconds(b, e.Total)
		b = append(b, " attempts="...)
		b = strconv.AppendInt(b, int64(e.Attempts), 10)
		b = append(b, " gen="...)
		b = strconv.AppendInt(b, int64(x.Generation), 10)
		b = append(b, " in="...)
		b = strconv.AppendInt(b, e.BytesIn, 10)
		b = append(b, " out="...)
		b = strconv.AppendInt(b, e.BytesOut, 10)
		b = append(b, " term="...)
		b = append(b, Term(e, x)...)
		if x.Draining {
			b = append(b, " draining=1"...)
		}
	}
	return append(b, '\n')
}

// appendCombined is Apache's
// `%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"`.
func appendCombined(b []byte, e *proxy.Exchange) []byte {
	b = append(b, clientIP(e.RemoteAddr)...)
	b = append(b, " - - ["...)
	b = e.Start.AppendFormat(b, clfTime)
	b = append(b, `] "`...)
	b = appendEscaped(b, e.Method)
	b = append(b, ' ')
	b = appendEscaped(b, e.URI)
	b = append(b, ' ')
	b = appendEscaped(b, e.Proto)
	b = append(b, `" `...)
	b = strconv.AppendInt(b, int64(status(e)), 10)
	b = append(b, ' ')
	if e.BytesOut > 0 {
		b = strconv.AppendInt(b, e.BytesOut, 10)
	} else {
		b = append(b, '-')
	}
	b = append(b, ` "`...)
	if e.Referer == "" {
		b = append(b, '-')
	} else {
		b = appendEscaped(b, e.Referer)
	}
	b = append(b, `" "`...)
	if e.UserAgent == "" {
		b = append(b, '-')
	} else {
		b = appendEscaped(b, e.UserAgent)
	}
	return append(b, '"')
}

func clientIP(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	if addr == "" {
		return "-"
	}
	return addr
}

const hexDigits = "0123456789abcdef"

// appendEscaped writes s as Apache does in its log: `"` and `\` escaped
// with a backslash, control and non-ASCII bytes as \xhh, so a line can be
// neither split nor forged by what a client sends.
func appendEscaped(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c >= 0x7f:
			b = append(b, '\\', 'x', hexDigits[c>>4], hexDigits[c&15])
		default:
			b = append(b, c)
		}
	}
	return b
}

// appendSeconds writes d in seconds with microsecond precision.
func appendSeconds(b []byte, d time.Duration) []byte {
	return strconv.AppendFloat(b, d.Seconds(), 'f', 6, 64)
}

func appendJSON(b []byte, e *proxy.Exchange, x Extra) []byte {
	b = append(b, `{"time":"`...)
	b = e.Start.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","client":`...)
	b = appendJSONString(b, e.RemoteAddr)
	b = append(b, `,"method":`...)
	b = appendJSONString(b, e.Method)
	b = append(b, `,"uri":`...)
	b = appendJSONString(b, e.URI)
	b = append(b, `,"proto":`...)
	b = appendJSONString(b, e.Proto)
	b = append(b, `,"host":`...)
	b = appendJSONString(b, e.Host)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(status(e)), 10)
	b = append(b, `,"bytes_in":`...)
	b = strconv.AppendInt(b, e.BytesIn, 10)
	b = append(b, `,"bytes_out":`...)
	b = strconv.AppendInt(b, e.BytesOut, 10)
	b = append(b, `,"referer":`...)
	b = appendJSONString(b, e.Referer)
	b = append(b, `,"user_agent":`...)
	b = appendJSONString(b, e.UserAgent)
	b = append(b, `,"backend":`...)
	b = appendJSONString(b, e.Backend)
	b = append(b, `,"attempts":`...)
	b = strconv.AppendInt(b, int64(e.Attempts), 10)
	b = append(b, `,"retries":`...)
	b = strconv.AppendInt(b, int64(max(e.Attempts-1, 0)), 10)
	b = append(b, `,"held_s":`...)
	b = appendSeconds(b, e.Held)
	b = append(b, `,"upstream_s":`...)
	b = appendSeconds(b, e.Upstream)
	b = append(b, `,"total_s":`...)
	b = appendSeconds(b, e.Total)
	b = append(b, `,"generation":`...)
	b = strconv.AppendInt(b, int64(x.Generation), 10)
	b = append(b, `,"draining":`...)
	b = strconv.AppendBool(b, x.Draining)
	b = append(b, `,"tls":`...)
	b = strconv.AppendBool(b, e.TLS)
	b = append(b, `,"term":"`...)
	b = append(b, Term(e, x)...)
	return append(b, "\"}\n"...)
}

// appendJSONString writes s as a JSON string; invalid UTF-8 becomes U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&15])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+n]...)
		}
		i += n
	}
	return append(b, '"')
}
