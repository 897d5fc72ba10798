package tls13

import (
	"bytes"
	"crypto/tls"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"testing"
)

// recs builds a client's records with a session's keys.
type recs func(z *sealer) [][]byte

func data(z *sealer, p []byte) []byte { return z.seal(typeAppData, inner(p, typeAppData, 0)) }

func repeat(n int, f func() []byte) [][]byte {
	var out [][]byte
	for range n {
		out = append(out, f())
	}
	return out
}

func cat(parts ...[][]byte) [][]byte {
	var out [][]byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func one(b []byte) [][]byte { return [][]byte{b} }

// hsRecord is a record of handshake bytes (not a key change).
func hsRecord(z *sealer, p ...byte) []byte { return z.seal(typeAppData, inner(p, typeHandshake, 0)) }

var readerCases = []struct {
	name     string
	records  recs
	wantData string // "" for none; "N×c": N bytes c
	wantEnd  string
	// cryptoEnd is crypto/tls's ending where it differs (see Reader).
	cryptoEnd string
	asked     int // KeyUpdates that asked for one in return
}{
	{name: "data", records: func(z *sealer) [][]byte { return one(data(z, []byte("hello"))) }, wantData: "hello", wantEnd: "eof"},
	{name: "a record of 2^14", records: func(z *sealer) [][]byte { return one(data(z, bytes.Repeat([]byte("a"), MaxPlaintext))) }, wantData: "16384×a", wantEnd: "eof"},
	{name: "padded to 2^14+1", records: func(z *sealer) [][]byte {
		return one(z.seal(typeAppData, inner([]byte("a"), typeAppData, MaxPlaintext-1)))
	}, wantData: "a", wantEnd: "eof"},
	{name: "padded beyond 2^14+1", records: func(z *sealer) [][]byte {
		return one(z.seal(typeAppData, inner([]byte("a"), typeAppData, MaxPlaintext)))
	}, wantEnd: "alert record_overflow"},
	{name: "2^14+1 bytes of data", records: func(z *sealer) [][]byte { return one(data(z, bytes.Repeat([]byte("a"), MaxPlaintext+1))) }, wantEnd: "alert record_overflow"},
	{name: "ciphertext of 2^14+256", records: func(z *sealer) [][]byte {
		return one(z.seal(typeAppData, inner([]byte("a"), typeAppData, MaxCiphertext-z.k.aead.Overhead()-2)))
	}, wantEnd: "alert record_overflow"},
	{name: "ciphertext beyond 2^14+256", records: func(z *sealer) [][]byte {
		n := MaxCiphertext + 1
		return one(append([]byte{typeAppData, 3, 3, byte(n >> 8), byte(n)}, make([]byte, n)...))
	}, wantEnd: "alert record_overflow"},
	{name: "16 empty records, then data", records: func(z *sealer) [][]byte {
		return cat(repeat(16, func() []byte { return data(z, nil) }), one(data(z, []byte("x"))), repeat(16, func() []byte { return data(z, nil) }))
	}, wantData: "x", wantEnd: "eof"},
	{name: "17 empty records", records: func(z *sealer) [][]byte { return repeat(17, func() []byte { return data(z, nil) }) }, wantEnd: "alert unexpected_message"},
	{name: "padding only", records: func(z *sealer) [][]byte { return one(z.seal(typeAppData, make([]byte, 10))) }, wantEnd: "alert unexpected_message"},
	{name: "empty plaintext", records: func(z *sealer) [][]byte { return one(z.seal(typeAppData, nil)) },
		wantEnd: "alert unexpected_message", cryptoEnd: "eof"},
	{name: "ciphertext shorter than a tag", records: func(z *sealer) [][]byte { return one([]byte{typeAppData, 3, 3, 0, 5, 1, 2, 3, 4, 5}) }, wantEnd: "alert bad_record_mac"},
	{name: "empty ciphertext", records: func(z *sealer) [][]byte { return one([]byte{typeAppData, 3, 3, 0, 0}) }, wantEnd: "alert bad_record_mac"},
	{name: "corrupt tag", records: func(z *sealer) [][]byte {
		r := data(z, []byte("hello"))
		r[len(r)-1] ^= 1
		return one(r)
	}, wantEnd: "alert bad_record_mac"},
	{name: "record version 3.1", records: func(z *sealer) [][]byte {
		r := data(z, []byte("hello"))
		r[2] = 1
		return one(r)
	}, wantEnd: "alert protocol_version"},
	{name: "protected with outer type handshake", records: func(z *sealer) [][]byte {
		return one(z.seal(typeHandshake, inner([]byte("hello"), typeAppData, 0)))
	}, wantEnd: "alert unexpected_message"},
	{name: "plaintext alert", records: func(z *sealer) [][]byte { return one([]byte{typeAlert, 3, 3, 0, 2, 2, 40}) }, wantEnd: "alert bad_record_mac"},
	{name: "change_cipher_spec", records: func(z *sealer) [][]byte {
		return cat(one([]byte{typeChangeCipherSpec, 3, 3, 0, 1, 1}), one(data(z, []byte("x"))))
	}, wantData: "x", wantEnd: "eof"},
	{name: "malformed change_cipher_spec", records: func(z *sealer) [][]byte { return one([]byte{typeChangeCipherSpec, 3, 3, 0, 1, 2}) }, wantEnd: "alert decode_error"},
	{name: "protected change_cipher_spec", records: func(z *sealer) [][]byte {
		return cat(one(z.seal(typeAppData, inner([]byte{1}, typeChangeCipherSpec, 0))), one(data(z, []byte("x"))))
	}, wantData: "x", wantEnd: "eof"},
	{name: "close_notify, fatal", records: func(z *sealer) [][]byte {
		return cat(one(data(z, []byte("x"))), one(z.seal(typeAppData, inner([]byte{2, 0}, typeAlert, 0))), one(data(z, []byte("after"))))
	}, wantData: "x", wantEnd: "eof"},
	{name: "user_canceled", records: func(z *sealer) [][]byte {
		return cat(one(z.seal(typeAppData, inner([]byte{1, 90}, typeAlert, 0))), one(data(z, []byte("x"))))
	}, wantData: "x", wantEnd: "eof"},
	{name: "17 user_canceled", records: func(z *sealer) [][]byte {
		return repeat(17, func() []byte { return z.seal(typeAppData, inner([]byte{1, 90}, typeAlert, 0)) })
	}, wantEnd: "alert unexpected_message"},
	{name: "fatal alert", records: func(z *sealer) [][]byte {
		return cat(one(data(z, []byte("x"))), one(z.seal(typeAppData, inner([]byte{2, 20}, typeAlert, 0))))
	}, wantData: "x", wantEnd: "remote bad_record_mac"},
	{name: "warning alert", records: func(z *sealer) [][]byte { return one(z.seal(typeAppData, inner([]byte{1, 40}, typeAlert, 0))) }, wantEnd: "remote alert 40"},
	{name: "malformed alert", records: func(z *sealer) [][]byte { return one(z.seal(typeAppData, inner([]byte{2, 40, 0}, typeAlert, 0))) }, wantEnd: "alert unexpected_message"},
	{name: "KeyUpdate asking for one", records: func(z *sealer) [][]byte {
		return cat(one(z.keyUpdate(1)), one(data(z, []byte("x"))))
	}, wantData: "x", wantEnd: "eof", asked: 1},
	{name: "KeyUpdate in two records", records: func(z *sealer) [][]byte {
		a := hsRecord(z, msgKeyUpdate, 0)
		b := hsRecord(z, 0, 1, 1)
		z.k.next()
		return cat(one(a), one(b), one(data(z, []byte("x"))))
	}, wantData: "x", wantEnd: "eof", asked: 1},
	{name: "KeyUpdate a byte a record", records: func(z *sealer) [][]byte {
		var out [][]byte
		for _, c := range []byte{msgKeyUpdate, 0, 0, 1, 0} {
			out = append(out, hsRecord(z, c))
		}
		z.k.next()
		return append(out, data(z, []byte("x")))
	}, wantData: "x", wantEnd: "eof"},
	{name: "two KeyUpdates in one record", records: func(z *sealer) [][]byte {
		return one(hsRecord(z, msgKeyUpdate, 0, 0, 1, 0, msgKeyUpdate, 0, 0, 1, 0))
	}, wantEnd: "alert unexpected_message"},
	{name: "data inside a KeyUpdate", records: func(z *sealer) [][]byte {
		return cat(one(hsRecord(z, msgKeyUpdate, 0)), one(data(z, []byte("x"))))
	}, wantEnd: "alert unexpected_message"},
	{name: "close_notify inside a KeyUpdate", records: func(z *sealer) [][]byte {
		return one(hsRecord(z, msgKeyUpdate, 0)) // the test's close_notify follows
	}, wantEnd: "alert unexpected_message"},
	{name: "KeyUpdate with request_update 2", records: func(z *sealer) [][]byte { return one(hsRecord(z, msgKeyUpdate, 0, 0, 1, 2)) }, wantEnd: "alert decode_error"},
	{name: "KeyUpdate of 2 bytes", records: func(z *sealer) [][]byte { return one(hsRecord(z, msgKeyUpdate, 0, 0, 2, 0, 0)) }, wantEnd: "alert decode_error"},
	{name: "KeyUpdate of 16 MB", records: func(z *sealer) [][]byte { return one(hsRecord(z, msgKeyUpdate, 0xff, 0xff, 0xff)) },
		wantEnd: "alert decode_error", cryptoEnd: "alert internal_error"},
	{name: "empty handshake record", records: func(z *sealer) [][]byte { return one(hsRecord(z)) }, wantEnd: "alert unexpected_message"},
	{name: "NewSessionTicket from the client", records: func(z *sealer) [][]byte {
		return one(hsRecord(z, 4, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 7, 0, 0))
	}, wantEnd: "alert unexpected_message"},
	{name: "CertificateRequest from the client", records: func(z *sealer) [][]byte { return one(hsRecord(z, 13, 0, 0, 3, 0, 0, 0)) },
		wantEnd: "alert unexpected_message"},
	{name: "Finished after the handshake", records: func(z *sealer) [][]byte {
		return one(hsRecord(z, append([]byte{20, 0, 0, 32}, make([]byte, 32)...)...))
	}, wantEnd: "alert unexpected_message"},
	{name: "unknown handshake message", records: func(z *sealer) [][]byte { return one(hsRecord(z, 99, 0, 0, 1, 0)) }, wantEnd: "alert unexpected_message"},
	{name: "heartbeat", records: func(z *sealer) [][]byte { return one(z.seal(typeAppData, inner([]byte{1, 0, 0}, 24, 0))) }, wantEnd: "alert unexpected_message"},
	{name: "16 KeyUpdates, data, 16 more", records: func(z *sealer) [][]byte {
		return cat(repeat(16, func() []byte { return z.keyUpdate(1) }), one(data(z, []byte("x"))), repeat(16, func() []byte { return z.keyUpdate(0) }))
	}, wantData: "x", wantEnd: "eof", asked: 16},
	{name: "17 KeyUpdates", records: func(z *sealer) [][]byte { return repeat(17, func() []byte { return z.keyUpdate(1) }) },
		wantEnd: "alert unexpected_message", asked: 16},
}

func wantData(s string) []byte {
	var n int
	var c string
	if i := bytes.IndexRune([]byte(s), '×'); i > 0 {
		for _, d := range s[:i] {
			n = 10*n + int(d-'0')
		}
		c = s[i+len("×"):]
		return bytes.Repeat([]byte(c), n)
	}
	return []byte(s)
}

// TestReader sends each case's records, followed by close_notify, to a
// Reader (whole, a byte at a time, and in random pieces) and to
// crypto/tls's server: both take the same data and end alike, but where
// the case says how crypto/tls differs (see Reader).
func TestReader(t *testing.T) {
	c := newCerts(t)
	for _, tc := range readerCases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSession(t, c, true)
			z := newSealer(t, s.suite, s.client)
			var stream []byte
			for _, r := range tc.records(z) {
				stream = append(stream, r...)
			}
			stream = append(stream, z.seal(typeAppData, inner([]byte{1, 0}, typeAlert, 0))...)
			want := wantData(tc.wantData)
			rng := rand.New(rand.NewPCG(1, 2))
			for _, sp := range []struct {
				name  string
				split func() int
			}{
				{"whole", func() int { return len(stream) }},
				{"a byte at a time", func() int { return 1 }},
				{"random pieces", func() int { return 1 + rng.IntN(2*MaxCiphertext) }},
			} {
				got, w := viaReader(t, s, stream, sp.split)
				if got.end != tc.wantEnd || !bytes.Equal(got.data, want) {
					t.Errorf("Reader, %s: ended %q (%v) with %d bytes %.40q; want %q with %d bytes", sp.name, got.end, got.detail, len(got.data), got.data, tc.wantEnd, len(want))
				}
				if wantUpdates := min(tc.asked, 1); w.Updates() != wantUpdates {
					t.Errorf("Reader, %s: %d KeyUpdates in return, want %d (one until data goes)", sp.name, w.Updates(), wantUpdates)
				}
			}
			theirs, back := viaCryptoTLS(t, s, stream)
			wantEnd := tc.wantEnd
			if tc.cryptoEnd != "" {
				wantEnd = tc.cryptoEnd
			}
			if theirs.end != wantEnd || !bytes.Equal(theirs.data, want) {
				t.Errorf("crypto/tls: ended %q (%v) with %d bytes %.40q; want %q with %d bytes", theirs.end, theirs.detail, len(theirs.data), theirs.data, wantEnd, len(want))
			}
			if back.updates != tc.asked {
				t.Errorf("crypto/tls answered %d KeyUpdates, want %d", back.updates, tc.asked)
			}
		})
	}
}

// TestChaCha20Poly1305 runs TestReader and TestWriter again in a process
// where crypto/tls prefers TLS_CHACHA20_POLY1305_SHA256 (as on a machine
// without AES instructions: GODEBUG=cpu.aes=off), which the tests then
// require.
func TestChaCha20Poly1305(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^(TestReader|TestWriter)$", "-test.count=1")
	cmd.Env = append(os.Environ(), "GODEBUG=cpu.aes=off", "TLS13_WANT_SUITE=TLS_CHACHA20_POLY1305_SHA256")
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("PASS")) {
		t.Fatalf("TestReader and TestWriter with ChaCha20-Poly1305: %v\n%s", err, out)
	}
}

// TestSuites: for each suite, what a Writer seals (data, KeyUpdates) a
// Reader with the same secret opens, and a record of the other's key
// fails.
func TestSuites(t *testing.T) {
	for _, id := range []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256} {
		t.Run(tls.CipherSuiteName(id), func(t *testing.T) {
			s, ok := SuiteByID(id)
			if !ok {
				t.Fatal("not a suite")
			}
			secret := bytes.Repeat([]byte{7}, s.hash().Size())
			w, err := NewWriter(s, secret, 0)
			if err != nil {
				t.Fatal(err)
			}
			w.rekeyAfter = 3
			want := bytes.Repeat([]byte("0123456789"), 5000)
			out := w.Seal(nil, want[:10])
			out = w.Update(out, true)
			out = w.Seal(out, want[10:])
			out = w.Alert(out, AlertCloseNotify)
			r, err := NewReader(s, secret)
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			asked := 0
			for {
				n, p, ask, err := r.Open(out)
				if ask {
					asked++
				}
				if err == io.EOF {
					break
				}
				if err != nil || n == 0 {
					t.Fatalf("open: %d, %v", n, err)
				}
				got = append(got, p...)
				out = out[n:]
			}
			if !bytes.Equal(got, want) || asked != 1 || w.Updates() < 2 {
				t.Errorf("got %d bytes, %d asked, %d KeyUpdates; want %d bytes, 1 asked, rekeyed", len(got), asked, w.Updates(), len(want))
			}
			other, _ := NewReader(s, bytes.Repeat([]byte{8}, s.hash().Size()))
			if _, _, _, err := other.Open(w.Seal(nil, []byte("x"))); endOf(err) != "alert bad_record_mac" {
				t.Errorf("another key: %v, want bad_record_mac", err)
			}
		})
	}
}
