package tls13

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
)

// Operations of a client's record stream, for FuzzReader.
const (
	opData         = iota // application data: length from the next two bytes, padding from the next
	opEmpty               // an empty data record
	opUpdateAsk           // KeyUpdate, update_requested
	opUpdate              // KeyUpdate, update_not_requested
	opUpdateSplit         // a KeyUpdate in 2..5 records
	opUserCanceled        // user_canceled alert
	opAlert               // a fatal alert: description from the next byte
	opHandshake           // a handshake message: type, length and splits from the next bytes
	opCCS                 // unprotected change_cipher_spec: value from the next byte
	opFlip                // flips a byte of the last record: position from the next two bytes
	opClose               // close_notify
	opPadOnly             // a record of padding only
	nOps
)

// clientStream turns ops into the records of a session's client. The
// stream always ends with close_notify, after which nothing counts.
func clientStream(z *sealer, ops []byte) []byte {
	var out [][]byte
	next := func() int {
		if len(ops) == 0 {
			return 0
		}
		b := ops[0]
		ops = ops[1:]
		return int(b)
	}
	fill := 0
	for len(ops) > 0 {
		switch next() % nOps {
		case opData:
			n := (next()<<8 | next()) % (MaxPlaintext + 2)
			pad := next() * 64
			if n+1+pad > MaxPlaintext+1 && next()%4 != 0 {
				pad = max(0, MaxPlaintext-n) // mostly within the limit
			}
			p := make([]byte, n)
			for i := range p {
				p[i] = byte(fill)
				fill++
			}
			if n == 0 && pad == 0 {
				pad = 1 // an empty plaintext is a known difference (see Reader)
			}
			if n == 0 {
				out = append(out, z.seal(typeAppData, inner(nil, typeAppData, pad-1)))
				continue
			}
			out = append(out, z.seal(typeAppData, inner(p, typeAppData, pad)))
		case opEmpty:
			out = append(out, data(z, nil))
		case opUpdateAsk:
			out = append(out, z.keyUpdate(1))
		case opUpdate:
			out = append(out, z.keyUpdate(0))
		case opUpdateSplit:
			msg := []byte{msgKeyUpdate, 0, 0, 1, byte(next() % 2)}
			cut := 1 + next()%4
			out = append(out, hsRecord(z, msg[:cut]...), hsRecord(z, msg[cut:]...))
			if err := z.k.next(); err != nil {
				panic(err)
			}
		case opUserCanceled:
			out = append(out, z.seal(typeAppData, inner([]byte{1, byte(AlertUserCanceled)}, typeAlert, 0)))
		case opAlert:
			d := byte(next())
			if d == byte(AlertCloseNotify) || d == byte(AlertUserCanceled) {
				d = byte(AlertInternalError)
			}
			out = append(out, z.seal(typeAppData, inner([]byte{2, d}, typeAlert, 0)))
		case opHandshake:
			typ := byte(next())
			n := next() % 8
			m := append([]byte{typ, 0, 0, byte(n)}, make([]byte, n)...)
			for len(m) > 0 {
				k := min(len(m), 1+next()%len(m))
				out = append(out, hsRecord(z, m[:k]...))
				m = m[k:]
			}
			if typ == msgKeyUpdate && n == 1 {
				// A well-formed KeyUpdate: the keys move on.
				if err := z.k.next(); err != nil {
					panic(err)
				}
			}
		case opCCS:
			v := byte(1)
			if next()%8 == 0 {
				v = byte(next())
			}
			out = append(out, []byte{typeChangeCipherSpec, 3, 3, 0, 1, v})
		case opFlip:
			if len(out) > 0 {
				r := out[len(out)-1]
				r[(next()<<8|next())%len(r)] ^= byte(1 + next()%255)
			}
		case opClose:
			out = append(out, z.seal(typeAppData, inner([]byte{1, 0}, typeAlert, 0)))
		case opPadOnly:
			out = append(out, z.seal(typeAppData, make([]byte, 1+next())))
		}
	}
	out = append(out, z.seal(typeAppData, inner([]byte{1, 0}, typeAlert, 0)))
	return bytes.Join(out, nil)
}

// knownDifference reports whether the Reader's error is one where it
// ends earlier than crypto/tls, with an alert of its own (see Reader).
func knownDifference(err error) bool {
	var e *Error
	return errors.As(err, &e) && (strings.Contains(e.Msg, "after the handshake") || strings.Contains(e.Msg, "wrong length"))
}

// FuzzReader is the differential test of Reader against crypto/tls's
// server: the same client records (data of every size, padding,
// KeyUpdates whole and split, alerts, change_cipher_spec, other handshake
// messages, corrupted bytes), read in random pieces, give the same data
// and the same end.
func FuzzReader(f *testing.F) {
	for _, seed := range [][]byte{
		{opData, 0, 5, 0},
		{opData, 0x40, 0, 0, opData, 0x40, 1, 0, 1},
		{opUpdateAsk, opData, 0, 3, 0, opUpdate, opData, 0, 3, 0},
		{opUpdateSplit, 1, 2, opData, 0, 3, 0},
		bytes.Repeat([]byte{opUpdateAsk}, 17),
		bytes.Repeat([]byte{opEmpty}, 17),
		append(bytes.Repeat([]byte{opUserCanceled}, 16), opData, 0, 1, 0),
		{opAlert, 40},
		{opHandshake, 4, 3, 1},
		{opHandshake, msgKeyUpdate, 1, 2, opData, 0, 2, 0},
		{opCCS, 0, opData, 0, 1, 0},
		{opData, 0, 9, 0, opFlip, 0, 7, 1},
		{opPadOnly, 3},
		{opData, 0x3f, 0xff, 200, 1},
		{opClose, opData, 0, 4, 0},
	} {
		f.Add(seed, uint64(1))
	}
	c := newCerts(f)
	f.Fuzz(func(t *testing.T, ops []byte, seed uint64) {
		if len(ops) > 256 {
			return
		}
		s := newSession(t, c, true)
		stream := clientStream(newSealer(t, s.suite, s.client), ops)
		rng := rand.New(rand.NewPCG(seed, seed>>32))
		ours, _ := viaReader(t, s, stream, func() int { return 1 + rng.IntN(2*MaxCiphertext+HeaderLen) })
		theirs, _ := viaCryptoTLS(t, s, stream)
		if knownDifference(ours.detail) {
			if !strings.HasPrefix(theirs.end, "alert ") || !bytes.Equal(ours.data, theirs.data) {
				t.Fatalf("Reader ended %q (%v) with %d bytes; crypto/tls %q (%v) with %d bytes, want an alert and the same data",
					ours.end, ours.detail, len(ours.data), theirs.end, theirs.detail, len(theirs.data))
			}
			return
		}
		if ours.end != theirs.end || !bytes.Equal(ours.data, theirs.data) {
			t.Fatalf("Reader ended %q (%v) with %d bytes; crypto/tls %q (%v) with %d bytes", ours.end, ours.detail, len(ours.data),
				theirs.end, theirs.detail, len(theirs.data))
		}
	})
}

// Operations of a server's writes, for FuzzWriter.
const (
	wData       = iota // application data: length from the next two bytes (times 4)
	wUpdateAsk         // a KeyUpdate of the server's that asks for one
	wUpdate            // one that does not
	wAnswer            // Answer, as for a client's request
	wClientData        // the client writes: length from the next byte
	nWriteOps
)

// FuzzWriter sends a Writer's records (data of every size, KeyUpdates,
// answers, rekeying after a few records) in random pieces to crypto/tls's
// client, which must read exactly the data; the client's own records
// (its answers to KeyUpdates, its data) go the other way through a
// Reader.
func FuzzWriter(f *testing.F) {
	for _, seed := range [][]byte{
		{wData, 0, 10},
		{wData, 0x10, 0, wUpdateAsk, wData, 0, 1, wClientData, 9},
		{wUpdate, wUpdate, wAnswer, wAnswer, wData, 0x20, 0},
		{wData, 0xff, 0xff, wUpdateAsk, wUpdateAsk, wClientData, 200, wData, 1, 1},
	} {
		f.Add(seed, uint8(3), uint64(1))
	}
	c := newCerts(f)
	f.Fuzz(func(t *testing.T, ops []byte, rekey uint8, seed uint64) {
		if len(ops) > 64 {
			return
		}
		s := newSession(t, c, false)
		testWriter(t, s, ops, uint64(rekey), seed)
	})
}

// testWriter runs FuzzWriter's ops on s.
func testWriter(t *testing.T, s *session, ops []byte, rekey, seed uint64) {
	w, err := NewWriter(s.suite, s.server, 0) // no session ticket was sent
	if err != nil {
		t.Fatal(err)
	}
	if rekey > 1 {
		w.rekeyAfter = rekey
	}
	r, err := NewReader(s.suite, s.client)
	if err != nil {
		t.Fatal(err)
	}
	// The client reads all the server sends, and then writes.
	type result struct {
		data []byte
		err  error
	}
	read := make(chan result, 1)
	clientData := make(chan []byte, 1)
	go func() {
		b, err := readAll(s.cli)
		read <- result{b, err}
		p := <-clientData
		if _, err := s.cli.Write(p); err == nil {
			_ = s.cli.CloseWrite() // close_notify
		}
		_ = s.cliRaw.(*net.TCPConn).CloseWrite()
	}()
	next := func() int {
		if len(ops) == 0 {
			return 0
		}
		b := ops[0]
		ops = ops[1:]
		return int(b)
	}
	rng := rand.New(rand.NewPCG(seed, seed>>32))
	var sent, want, wantClient []byte
	asked := 0
	flush := func(all bool) {
		for len(sent) > 0 {
			k := min(len(sent), 1+rng.IntN(2*MaxCiphertext))
			if all {
				k = len(sent)
			}
			if _, err := s.srvRaw.Write(sent[:k]); err != nil {
				t.Fatal(err)
			}
			sent = sent[k:]
		}
	}
	fill := 0
	for len(ops) > 0 {
		switch next() % nWriteOps {
		case wData:
			n := (next()<<8 | next()) * 4 % (4*MaxPlaintext + 3)
			p := make([]byte, n)
			for i := range p {
				p[i] = byte(fill)
				fill++
			}
			want = append(want, p...)
			sent = w.Seal(sent, p)
		case wUpdateAsk:
			sent = w.Update(sent, true)
			asked++
		case wUpdate:
			sent = w.Update(sent, false)
		case wAnswer:
			sent = w.Answer(sent)
		case wClientData:
			wantClient = append(wantClient, bytes.Repeat([]byte{byte(next())}, next())...)
		}
		flush(false)
	}
	sent = w.Alert(sent, AlertCloseNotify)
	flush(true)
	got := <-read
	if got.err != nil || !bytes.Equal(got.data, want) {
		t.Fatalf("crypto/tls's client read %d bytes, %v; want %d bytes and close_notify", len(got.data), got.err, len(want))
	}
	clientData <- wantClient
	back, err := readAll(s.srvRaw)
	if err != nil {
		t.Fatal(err)
	}
	var data []byte
	for {
		n, p, ask, err := r.Open(back)
		if ask {
			t.Error("the client asked for a KeyUpdate")
		}
		if err == io.EOF {
			break
		}
		if err != nil || n == 0 {
			t.Fatalf("opening the client's records: %d, %v (%d bytes left)", n, err, len(back))
		}
		data = append(data, p...)
		back = back[n:]
	}
	if !bytes.Equal(data, wantClient) {
		t.Errorf("client data: got %d bytes, want %d", len(data), len(wantClient))
	}
	// The client answered every KeyUpdate that asked for one: the Reader
	// moved through its keys (it opened its data and its close_notify).
	t.Logf("%d bytes in %d KeyUpdates (%d asked for), %d bytes back", len(want), w.Updates(), asked, len(data))
}

// TestWriter: data in records of at most 2^14, KeyUpdates of the
// server's own, a key replaced after its share of records, answers that
// coalesce until data goes: crypto/tls's client reads it all.
func TestWriter(t *testing.T) {
	c := newCerts(t)
	for _, tc := range []struct {
		name  string
		ops   []byte
		rekey uint64
	}{
		{"records of every size", []byte{wData, 0, 0, wData, 0, 1, wData, 0x0f, 0xff, wData, 0x10, 0, wData, 0x10, 1, wData, 0x61, 0xa8}, 0},
		{"KeyUpdates", []byte{wUpdateAsk, wData, 0, 9, wUpdate, wUpdateAsk, wData, 0x20, 0, wClientData, 7, 100}, 0},
		{"rekey after 3 records", []byte{wData, 0x40, 0, wData, 0x40, 0, wClientData, 1, 10}, 3},
		{"answers", []byte{wAnswer, wAnswer, wData, 0, 1, wAnswer, wAnswer}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testWriter(t, newSession(t, c, false), tc.ops, tc.rekey, 1)
		})
	}
	// Answer coalesces until data goes; Seal cuts records at 2^14 and
	// replaces a key after its share.
	s := newSession(t, c, false)
	w, err := NewWriter(s.suite, s.server, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := w.Answer(w.Answer(nil))
	if w.Updates() != 1 {
		t.Errorf("two answers with nothing between: %d KeyUpdates, want 1", w.Updates())
	}
	out = w.Answer(w.Seal(out, []byte("x")))
	if w.Updates() != 2 {
		t.Errorf("an answer after data: %d KeyUpdates, want 2", w.Updates())
	}
	w.rekeyAfter = 4
	out = w.Seal(out, make([]byte, 10*MaxPlaintext))
	got, err := openPeer(s.suite, s.server, out)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.data) != 10*MaxPlaintext+1 || got.updates < 4 || len(got.rest) != 0 {
		t.Errorf("opened %d bytes, %d KeyUpdates, %d left; want %d bytes, at least 4 KeyUpdates", len(got.data), got.updates, len(got.rest), 10*MaxPlaintext+1)
	}
	for b := out; len(b) > 0; b = b[RecordLen(b):] {
		if RecordLen(b)-HeaderLen > MaxPlaintext+1+16 {
			t.Fatalf("a record of %d bytes", RecordLen(b)-HeaderLen)
		}
	}
}
