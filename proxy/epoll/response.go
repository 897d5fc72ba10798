package epoll

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strconv"
)

// Body framings of a response.
const (
	bodyNone = iota
	bodyLength
	bodyChunked
	bodyClose // until the backend closes
)

// response is a parsed response header.
type response struct {
	n      int // bytes of the header block
	status int
	mode   int
	length int64
	keep   bool // the backend keeps the connection open after it
}

var errMalformed = errors.New("malformed response header")

// maxDropped bounds the header names a response's Connection header may
// list (they are dropped as hop-by-hop).
const maxDropped = 8

// parseResponse parses the response header at the start of b. It returns
// n == 0 while the header is incomplete. For a final response it appends
// the header the client gets to out: the status, the backend's headers
// but hop-by-hop ones, the framing, and Connection: close if close.
// Lines may end in CRLF or LF, as net/http reads them. For an HTTP/1.0
// client (v10) it writes what net/http's server writes to one: an
// HTTP/1.0 status line, no chunked framing (the body is then sent
// decoded, delimited by closing), Connection: keep-alive when the
// connection stays open (close false) and nothing when it closes.
func parseResponse(b []byte, head bool, out []byte, close, v10 bool) (response, []byte, error) {
	var r response
	end, n := headerEnd(b)
	if end < 0 {
		return r, out, nil
	}
	hdr := b[:end]
	line, rest := nextLine(hdr)
	line = trim(line)
	// Status line: HTTP/1.x SP 3DIGIT [SP reason]
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || (line[7] != '0' && line[7] != '1') || line[8] != ' ' {
		return r, out, fmt.Errorf("%w: bad status line %q", errMalformed, trim(line))
	}
	http11 := line[7] == '1'
	code := line[9:12]
	if !isDigit(code[0]) || !isDigit(code[1]) || !isDigit(code[2]) || len(line) > 12 && line[12] != ' ' {
		return r, out, fmt.Errorf("%w: bad status code %q", errMalformed, trim(line))
	}
	r.status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	if r.status < 100 {
		return r, out, fmt.Errorf("%w: bad status code %q", errMalformed, trim(line))
	}
	for _, c := range line {
		if c < ' ' && c != '\t' || c == 0x7f {
			return r, out, fmt.Errorf("%w: control character in status line", errMalformed)
		}
	}
	var (
		cl        int64 = -1
		chunked   bool
		connClose bool
		connKeep  bool
		dropped   [maxDropped][]byte
		ndropped  int
	)
	// First pass: check every line and find the framing.
	for ln, more := nextLine(rest); len(ln) > 0 || len(more) > 0; ln, more = nextLine(more) {
		ln = trim(ln)
		colon := bytes.IndexByte(ln, ':')
		if colon <= 0 || !validToken(ln[:colon]) {
			return r, out, fmt.Errorf("%w: bad header line %q", errMalformed, trim(ln))
		}
		name, v := ln[:colon], bytes.Trim(ln[colon+1:], " \t")
		if !validValue(v) {
			return r, out, fmt.Errorf("%w: control character in header %s", errMalformed, name)
		}
		switch {
		case eqFold(name, "content-length"):
			x, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil || x < 0 || v[0] == '+' {
				return r, out, fmt.Errorf("%w: bad Content-Length %q", errMalformed, v)
			}
			if cl >= 0 && x != cl {
				return r, out, fmt.Errorf("%w: conflicting Content-Length", errMalformed)
			}
			cl = x
		case eqFold(name, "transfer-encoding"):
			if !eqFold(v, "chunked") || chunked {
				return r, out, fmt.Errorf("%w: unsupported Transfer-Encoding %q", errMalformed, v)
			}
			chunked = true
		case eqFold(name, "connection"):
			for _, t := range bytes.Split(v, []byte(",")) {
				t = bytes.Trim(t, " \t")
				switch {
				case len(t) == 0:
				case eqFold(t, "close"):
					connClose = true
				case eqFold(t, "keep-alive"):
					connKeep = true
				case ndropped < maxDropped:
					dropped[ndropped] = t
					ndropped++
				default:
					return r, out, fmt.Errorf("%w: too many Connection tokens", errMalformed)
				}
			}
		}
	}
	r.n = n
	r.keep = http11 && !connClose || !http11 && connKeep && !connClose
	switch {
	case r.status < 200 || r.status == 204 || r.status == 304 || head:
		r.mode = bodyNone
	case chunked:
		r.mode = bodyChunked
	case cl >= 0:
		r.mode, r.length = bodyLength, cl
		if cl == 0 {
			r.mode = bodyNone
		}
	default:
		r.mode, r.keep = bodyClose, false
	}
	if r.status < 200 {
		return r, out, nil // informational: nothing for the client
	}

	if v10 {
		out = append(out, "HTTP/1.0 "...)
	} else {
		out = append(out, "HTTP/1.1 "...)
	}
	out = append(out, trim(line[9:])...)
	out = append(out, crlf...)
	for ln, more := nextLine(rest); len(ln) > 0 || len(more) > 0; ln, more = nextLine(more) {
		ln = trim(ln)
		colon := bytes.IndexByte(ln, ':')
		name := ln[:colon]
		if hopByHop(name) || eqFold(name, "content-length") && r.mode != bodyNone {
			continue
		}
		skip := false
		for i := 0; i < ndropped; i++ {
			if bytes.EqualFold(name, dropped[i]) {
				skip = true
			}
		}
		if skip {
			continue
		}
		out = append(out, ln...)
		out = append(out, crlf...)
	}
	switch r.mode {
	case bodyLength:
		out = append(out, "Content-Length: "...)
		out = strconv.AppendInt(out, r.length, 10)
		out = append(out, crlf...)
	case bodyChunked:
		if !v10 {
			out = append(out, "Transfer-Encoding: chunked\r\n"...)
		}
	case bodyNone:
		if r.status != 204 && r.status != 304 && !head {
			out = append(out, "Content-Length: 0\r\n"...)
		}
	}
	switch {
	case v10:
		if !close && r.mode != bodyClose && r.mode != bodyChunked {
			out = append(out, "Connection: keep-alive\r\n"...)
		}
	case close || r.mode == bodyClose:
		out = append(out, "Connection: close\r\n"...)
	}
	out = append(out, crlf...)
	return r, out, nil
}

// headerEnd finds the end of a header block: the index where the empty
// line starts, and the block's length with it; -1 if incomplete.
func headerEnd(b []byte) (int, int) {
	for i := 0; i < len(b); {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1, 0
		}
		lineLen := j
		if j > 0 && b[i+j-1] == '\r' {
			lineLen--
		}
		if lineLen == 0 && i > 0 {
			return i, i + j + 1
		}
		i += j + 1
	}
	return -1, 0
}

// nextLine splits off the first line of b (without its line ending).
func nextLine(b []byte) (line, rest []byte) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return b, nil
	}
	return b[:i], b[i+1:]
}

func trim(b []byte) []byte {
	return bytes.TrimRight(b, "\r")
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// hopByHop lists the response headers that do not go to the client
// (Transfer-Encoding and Connection are written by the loop).
func hopByHop(name []byte) bool {
	switch len(name) {
	case 7:
		return eqFold(name, "upgrade")
	case 10:
		return eqFold(name, "connection") || eqFold(name, "keep-alive")
	case 16:
		return eqFold(name, "proxy-connection")
	case 17:
		return eqFold(name, "transfer-encoding")
	case 2:
		return eqFold(name, "te")
	}
	return false
}

// chunkScanner follows a chunked body through the bytes passed on
// verbatim, to find where it ends.
type chunkScanner struct {
	state   uint8
	size    uint64
	ndigits int
}

const (
	csSize = iota
	csExt
	csSizeLF
	csData
	csDataCR
	csDataLF
	csTrailer
	csTrailerLine
	csTrailerLF
	csEndLF
	csDone
)

var errBadChunk = errors.New("malformed chunked response body")

// scan consumes p up to the end of the body; it returns how much of p
// belongs to the body and whether the body ended.
func (s *chunkScanner) scan(p []byte) (int, bool, error) {
	i := 0
	for i < len(p) {
		c := p[i]
		switch s.state {
		case csSize:
			switch {
			case isHex(c):
				if s.ndigits++; s.ndigits > 15 {
					return i, false, errBadChunk
				}
				s.size = s.size<<4 | uint64(unhex(c))
			case s.ndigits > 0 && (c == ';' || c == ' ' || c == '\t'):
				s.state = csExt
			case s.ndigits > 0 && c == '\r':
				s.state = csSizeLF
			default:
				return i, false, errBadChunk
			}
		case csExt:
			if c == '\r' {
				s.state = csSizeLF
			} else if c < ' ' && c != '\t' {
				return i, false, errBadChunk
			}
		case csSizeLF:
			if c != '\n' {
				return i, false, errBadChunk
			}
			if s.size == 0 {
				s.state = csTrailer
			} else {
				s.state = csData
			}
		case csData:
			k := uint64(len(p) - i)
			if k > s.size {
				k = s.size
			}
			s.size -= k
			i += int(k)
			if s.size == 0 {
				s.state = csDataCR
			}
			continue
		case csDataCR:
			if c != '\r' {
				return i, false, errBadChunk
			}
			s.state = csDataLF
		case csDataLF:
			if c != '\n' {
				return i, false, errBadChunk
			}
			s.state, s.ndigits = csSize, 0
		case csTrailer:
			if c == '\r' {
				s.state = csEndLF
			} else {
				s.state = csTrailerLine
			}
		case csTrailerLine:
			if c == '\r' {
				s.state = csTrailerLF
			}
		case csTrailerLF:
			if c != '\n' {
				return i, false, errBadChunk
			}
			s.state = csTrailer
		case csEndLF:
			if c != '\n' {
				return i, false, errBadChunk
			}
			s.state = csDone
			return i + 1, true, nil
		}
		i++
	}
	return i, false, nil
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func statusText(code int) string { return http.StatusText(code) }
