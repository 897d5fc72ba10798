package epoll

import (
	"bytes"
	"io"
	"net/http/httputil"
	"strings"
	"testing"
)

// decodeAll runs d over in, split into pieces of step bytes (a body
// arriving in several reads), and returns the data and the outcome.
func decodeAll(in string, step int) (data string, done bool, err error) {
	var d chunkDecoder
	var out bytes.Buffer
	var pending []byte
	for off := 0; off < len(in) && !done; off += step {
		pending = append(pending, in[off:min(off+step, len(in))]...)
		for len(pending) > 0 && !done {
			n, p, dn, e := d.next(pending, 1<<20)
			if e != nil {
				return out.String(), false, e
			}
			out.Write(p)
			pending, done = pending[n:], dn
			if n == 0 {
				break
			}
		}
	}
	return out.String(), done, nil
}

func TestChunkDecoder(t *testing.T) {
	for _, c := range []struct {
		name, in, data string
		done, bad      bool
	}{
		{"simple", "5\r\nhello\r\n0\r\n\r\n", "hello", true, false},
		{"two chunks", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world", true, false},
		{"upper hex", "A\r\n0123456789\r\n0\r\n\r\n", "0123456789", true, false},
		{"extension", "5;a=b\r\nhello\r\n0;x\r\n\r\n", "hello", true, false},
		{"trailing space", "5 \t\r\nhello\r\n0\r\n\r\n", "hello", true, false},
		{"trailer", "5\r\nhello\r\n0\r\nX-T: 1\r\nY: \r\n\r\n", "hello", true, false},
		{"incomplete", "5\r\nhel", "hel", false, false},
		{"no last chunk", "5\r\nhello\r\n", "hello", false, false},
		{"leading zeros", "0005\r\nhello\r\n0\r\n\r\n", "hello", true, false},
		{"16 digits", "0000000000000005\r\nhello\r\n0\r\n\r\n", "hello", true, false},
		{"17 digits", "00000000000000005\r\nhello\r\n0\r\n\r\n", "", false, true},
		{"bare LF size", "5\nhello\r\n0\r\n\r\n", "", false, true},
		{"bare CR size", "5\rhello\r\n0\r\n\r\n", "", false, true},
		{"bare LF data end", "5\r\nhello\n0\r\n\r\n", "hello", false, true},
		{"data too long", "5\r\nhelloX\r\n0\r\n\r\n", "hello", false, true},
		{"empty size", "\r\nhello\r\n0\r\n\r\n", "", false, true},
		{"space before ext", "5 ;a\r\nhello\r\n0\r\n\r\n", "", false, true},
		{"leading space", " 5\r\nhello\r\n0\r\n\r\n", "", false, true},
		{"space inside", "5 5\r\nhello\r\n0\r\n\r\n", "", false, true},
		{"sign", "+5\r\nhello\r\n0\r\n\r\n", "", false, true},
		{"0x", "0x5\r\nhello\r\n0\r\n\r\n", "", false, true},
		{"bad trailer", "0\r\nno colon\r\n\r\n", "", false, true},
		{"trailer LF", "0\r\nX: 1\nY: 2\r\n\n\r\n\r\n", "", true, false},
		{"trailer bare LF end", "0\r\n\nGET / HTTP/1.1\r\n\r\n", "", true, false},
		{"trailer without CRLF CRLF", "0\r\nX: 1\n\n", "", false, false},
		{"trailer CR in value", "0\r\nX: a\rb\r\n\r\n", "", false, true},
		{"obs-fold trailer", "0\r\nX: a\r\n b\r\n\r\n", "", true, false},
		{"obs-fold first trailer", "0\r\n b\r\n\r\n", "", false, true},
		{"long ext", "1;" + strings.Repeat("x", 5000) + "\r\na\r\n0\r\n\r\n", "", false, true},
		{"excess", strings.Repeat("1;"+strings.Repeat("e", 100)+"\r\na\r\n", 200) + "0\r\n\r\n", strings.Repeat("a", 150), false, true},
	} {
		for _, step := range []int{1, 3, len(c.in)} {
			data, done, err := decodeAll(c.in, step)
			if (err != nil) != c.bad || done != c.done || !c.bad && data != c.data {
				t.Errorf("%s (reads of %d): got %q done=%v err=%v; want %q done=%v bad=%v", c.name, step, data, done, err, c.data, c.done, c.bad)
			}
		}
		// net/http's own reader (the body, without the trailer) agrees.
		if i := strings.Index(c.in, "0\r\n"); c.done && i >= 0 || c.bad && !strings.Contains(c.name, "trailer") && c.name != "excess" {
			got, err := io.ReadAll(httputil.NewChunkedReader(strings.NewReader(c.in)))
			if (err != nil) != c.bad || !c.bad && string(got) != c.data {
				t.Errorf("%s: net/http reads %q, %v", c.name, got, err)
			}
		}
	}
}
