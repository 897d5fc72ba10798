package epoll_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestTLSRecords sends requests through a loop's record layer the way a
// peer may cut them: records of one byte and of 2^14, padded to the
// limit, written to the socket a byte at a time or in random pieces, with
// empty records, user_canceled and change_cipher_spec between; and the
// records a peer must not send, each of which ends its connection with the
// alert crypto/tls sends (the record layer's own tests check them against
// crypto/tls), while the loop goes on serving.
func TestTLSRecords(t *testing.T) {
	b := backend(t, tlsBackend())
	addr, cc := tlsPlane(t, newPool(true, b), nil)
	req := func(path string) []byte { return []byte("GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n") }
	// records cuts p into records of n bytes (with padding to the limit).
	records := func(c *rawTLS, p []byte, n int, pad bool) []byte {
		var out []byte
		for len(p) > 0 {
			k := min(n, len(p))
			in := append(append([]byte(nil), p[:k]...), 23)
			if pad {
				in = append(in, make([]byte, 16385-len(in))...)
			}
			out = append(out, c.wr.record(in)...)
			p = p[k:]
		}
		return out
	}
	post := func(n int) []byte {
		return append([]byte("POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: "+strconv.Itoa(n)+"\r\n\r\n"), bytes.Repeat([]byte("p"), n)...)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	good := []struct {
		name  string
		build func(c *rawTLS) []byte
		write func(c *rawTLS, b []byte) error
		want  string
	}{
		{"records of one byte", func(c *rawTLS) []byte { return records(c, req("/one"), 1, false) }, nil, "GET /one "},
		{"a record written a byte at a time", func(c *rawTLS) []byte { return c.seal(23, req("/bytes")) }, func(c *rawTLS, b []byte) error {
			for i := range b {
				if err := c.write(b[i : i+1]); err != nil {
					return err
				}
			}
			return nil
		}, "GET /bytes "},
		{"records of 2^14, in random pieces", func(c *rawTLS) []byte { return records(c, post(200000), 16384, false) }, func(c *rawTLS, b []byte) error {
			for len(b) > 0 {
				k := min(len(b), 1+rng.IntN(40000))
				if err := c.write(b[:k]); err != nil {
					return err
				}
				b = b[k:]
			}
			return nil
		}, "POST /post proto=HTTP/1.1 xfp=https body=200000"},
		{"records padded to the limit", func(c *rawTLS) []byte { return records(c, post(50000), 5000, true) }, nil, "body=50000"},
		{"empty records, user_canceled, change_cipher_spec between", func(c *rawTLS) []byte {
			var out []byte
			out = append(out, c.seal(23, nil)...)
			out = append(out, c.seal(23, req("/mixed")[:10])...)
			out = append(out, c.seal(21, []byte{1, 90})...)
			out = append(out, 20, 3, 3, 0, 1, 1)
			out = append(out, c.wr.record([]byte{23, 0, 0, 0})...) // an empty data record, padded
			return append(out, c.seal(23, req("/mixed")[10:])...)
		}, nil, "GET /mixed "},
	}
	for _, tc := range good {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRawTLS(t, addr, cc)
			b := tc.build(c)
			write := tc.write
			if write == nil {
				write = (*rawTLS).write
			}
			if err := write(c, b); err != nil {
				t.Fatal(err)
			}
			var got []byte
			for !bytes.Contains(got, []byte(tc.want)) {
				typ, p, err := c.next()
				if err != nil || typ != 23 {
					t.Fatalf("record %d %q, %v; so far %q, want %q", typ, p, err, got, tc.want)
				}
				got = append(got, p...)
			}
		})
	}

	bad := []struct {
		name  string
		build func(c *rawTLS) []byte
		alert int // -1: none (the client's own alert)
	}{
		{"plaintext of 2^14+1", func(c *rawTLS) []byte { return c.seal(23, bytes.Repeat([]byte("a"), 16385)) }, 22},
		{"padded beyond the limit", func(c *rawTLS) []byte { return c.wr.record(append([]byte{'a', 23}, make([]byte, 16384)...)) }, 22},
		{"ciphertext beyond 2^14+256", func(c *rawTLS) []byte { return append([]byte{23, 3, 3, 0x41, 0x01}, make([]byte, 16641)...) }, 22},
		{"padding only", func(c *rawTLS) []byte { return c.wr.record(make([]byte, 20)) }, 10},
		{"17 empty records", func(c *rawTLS) []byte {
			var out []byte
			for range 17 {
				out = append(out, c.seal(23, nil)...)
			}
			return out
		}, 10},
		{"NewSessionTicket from the client", func(c *rawTLS) []byte {
			return c.seal(22, []byte{4, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 7, 0, 0})
		}, 10},
		{"CertificateRequest", func(c *rawTLS) []byte { return c.seal(22, []byte{13, 0, 0, 3, 0, 0, 0}) }, 10},
		{"unknown handshake message", func(c *rawTLS) []byte { return c.seal(22, []byte{99, 0, 0, 0}) }, 10},
		{"two KeyUpdates in one record", func(c *rawTLS) []byte { return c.seal(22, []byte{24, 0, 0, 1, 0, 24, 0, 0, 1, 0}) }, 10},
		{"data inside a KeyUpdate", func(c *rawTLS) []byte { return append(c.seal(22, []byte{24, 0}), c.seal(23, req("/x"))...) }, 10},
		{"a fatal alert", func(c *rawTLS) []byte { return c.seal(21, []byte{2, 40}) }, -1},
		{"a warning alert", func(c *rawTLS) []byte { return c.seal(21, []byte{1, 42}) }, -1},
		{"a record of version 3.1", func(c *rawTLS) []byte {
			r := c.seal(23, req("/v"))
			r[2] = 1
			return r
		}, 70},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRawTLS(t, addr, cc)
			// A request first, answered; then the record, which ends the
			// connection.
			if err := c.write(c.seal(23, req("/before"))); err != nil {
				t.Fatal(err)
			}
			var got []byte
			for !bytes.Contains(got, []byte("GET /before ")) {
				typ, p, err := c.next()
				if err != nil || typ != 23 {
					t.Fatalf("record %d %q, %v; so far %q", typ, p, err, got)
				}
				got = append(got, p...)
			}
			if err := c.write(tc.build(c)); err != nil {
				t.Fatal(err)
			}
			alert, data, err := c.alertAndEOF()
			if alert != tc.alert || len(data) > 0 {
				t.Errorf("alert %d and %q, want %d and nothing; the connection ended with %v", alert, data, tc.alert, err)
			}
		})
	}

	t.Run("still serving", func(t *testing.T) {
		cfg := cc.Clone()
		cfg.NextProtos = []string{"http/1.1"}
		tr := &http.Transport{TLSClientConfig: cfg}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + addr + "/ok")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("got %d", resp.StatusCode)
		}
	})
}

// TestTLSCutResponse: a response whose backend fails after part of it
// went out ends with an internal_error alert, not the close_notify that
// would say that a response delimited by the close is complete.
func TestTLSCutResponse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				buf := make([]byte, 4096)
				_, _ = nc.Read(buf)
				// Half the body it announced, then the end.
				fmt.Fprintf(nc, "HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n%s", strings.Repeat("b", 100000))
			}()
		}
	}()
	addr, cc := tlsPlane(t, newPool(true, &upstream{name: "b1", addr: ln.Addr().String(), tr: &http.Transport{}}), nil)
	c := dialRawTLS(t, addr, cc)
	if err := c.write(c.seal(23, []byte("GET /cut HTTP/1.1\r\nHost: x\r\n\r\n"))); err != nil {
		t.Fatal(err)
	}
	alert, data, err := c.alertAndEOF()
	if alert != 80 {
		t.Errorf("after %d bytes: alert %d, want 80 (internal_error); ended with %v", len(data), alert, err)
	}
	if len(data) < 100000 {
		t.Errorf("%d bytes before the alert, want the header and 100000 bytes of the body", len(data))
	}
}
