package epoll_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"testing"
	"time"
)

// TestTLSKeyUpdateFlood is issue 16, item 10: a client that sends
// KeyUpdates that ask for one in return, one after the other, and reads
// nothing. The loop took any number of them (crypto/tls stops at 16
// records that do not advance) and answered each with a KeyUpdate it
// buffered without bound: one connection kept a loop busy and its memory
// growing. Now at most one answer is pending, the 17th record in a row
// that carries no data ends the connection with an unexpected_message
// alert, and a flood that goes on while another client is served on the
// same loop ends at once, with the other client's requests answered.
func TestTLSKeyUpdateFlood(t *testing.T) {
	b := backend(t, tlsBackend())
	addr, cc := tlsPlane(t, newPool(true, b), nil) // one loop

	t.Run("1000 in one write", func(t *testing.T) {
		c := dialRawTLS(t, addr, cc)
		var flood []byte
		for range 1000 {
			flood = append(flood, c.keyUpdate(true)...)
		}
		_ = c.write(flood) // the server may reset the connection while it is written
		alert, _, err := c.alertAndEOF()
		if alert != 10 {
			t.Errorf("alert: got %d, want 10 (unexpected_message); the connection ended with %v", alert, err)
		}
		if c.keyUpdates > 1 {
			t.Errorf("the server answered with %d KeyUpdates, want at most 1 (no data went between them)", c.keyUpdates)
		}
	})

	t.Run("16 are taken", func(t *testing.T) {
		// As through crypto/tls: 16 records in a row that carry no data
		// are taken; the request that follows them is answered.
		c := dialRawTLS(t, addr, cc)
		var recs []byte
		for range 16 {
			recs = append(recs, c.keyUpdate(true)...)
		}
		recs = append(recs, c.seal(23, []byte("GET /after HTTP/1.1\r\nHost: x\r\n\r\n"))...)
		for range 16 {
			recs = append(recs, c.keyUpdate(false)...)
		}
		recs = append(recs, c.seal(23, []byte("GET /again HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))...)
		if err := c.write(recs); err != nil {
			t.Fatal(err)
		}
		alert, data, err := c.alertAndEOF()
		if alert != 0 {
			t.Errorf("alert: got %d, want close_notify (0); ended with %v", alert, err)
		}
		if !bytes.Contains(data, []byte("GET /after ")) || !bytes.Contains(data, []byte("GET /again ")) {
			t.Errorf("responses: got %q, want both answered", data)
		}
		if c.keyUpdates != 1 {
			t.Errorf("the server answered with %d KeyUpdates, want 1", c.keyUpdates)
		}
	})

	t.Run("while others are served", func(t *testing.T) {
		var before runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		c := dialRawTLS(t, addr, cc)
		ended := make(chan error, 1)
		go func() {
			// The flood goes on until the server ends it, for 3 s at most.
			deadline := time.Now().Add(3 * time.Second)
			for time.Now().Before(deadline) {
				var batch []byte
				for range 64 {
					batch = append(batch, c.keyUpdate(true)...)
				}
				if err := c.write(batch); err != nil {
					ended <- err
					return
				}
			}
			ended <- nil
		}()
		cfg := cc.Clone()
		cfg.NextProtos = []string{"http/1.1"}
		tr := &http.Transport{TLSClientConfig: cfg}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		for i := range 20 {
			start := time.Now()
			resp, err := client.Get(fmt.Sprintf("https://%s/other%d", addr, i))
			if err != nil {
				t.Fatalf("another client's request %d during the flood: %v", i, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if d := time.Since(start); d > time.Second {
				t.Errorf("another client's request %d took %s during the flood", i, d)
			}
		}
		if err := <-ended; err == nil {
			t.Error("the flooding connection was still open after 3 s")
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
		t.Logf("heap grew by %d KiB during the flood", grown>>10)
		if grown > 16<<20 {
			t.Errorf("heap grew by %d MiB during the flood", grown>>20)
		}
	})
}

// TestTLSKeyUpdateMidDownload is issue 16, item 11: KeyUpdates (that ask
// for one in return) while a large response streams to the client. The
// loop wrote its answer, and with it what was pending, outside the path
// that resumes a backend paused for a slow client: the response stalled
// and was cut at the backend read timeout. Now the download completes,
// the requests are answered (those that reach the server together, once),
// and every record opens with the key it was sealed with. The server runs
// megabytes ahead of this client, so a request mostly comes while a record
// is half written (EAGAIN) and more wait sealed behind it.
func TestTLSKeyUpdateMidDownload(t *testing.T) {
	const size = 32 << 20
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	mux := http.NewServeMux()
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		for n := 0; n < size; n += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	b := backend(t, mux)
	addr, cc := tlsPlane(t, newPool(true, b), nil)
	const pattern = "0123456789abcdef"
	for try := range 3 {
		c := dialRawTLS(t, addr, cc)
		if err := c.write(c.seal(23, []byte("GET /big HTTP/1.1\r\nHost: x\r\n\r\n"))); err != nil {
			t.Fatal(err)
		}
		var head []byte // the response header, then nothing
		got := -1       // body bytes, once the header is complete
		// 16 KeyUpdates, as many as a server takes in a row without data
		// from the client (crypto/tls's bound too).
		asked, next := 0, 1<<20
		before := 0 // KeyUpdates answered when the last was asked for
		for got < size {
			typ, p, err := c.next()
			if err != nil {
				t.Fatalf("try %d: after %d bytes of the body and %d KeyUpdates asked for, %d answered: %v",
					try, got, asked, c.keyUpdates, err)
			}
			if typ != 23 {
				t.Fatalf("try %d: record type %d (%x) after %d bytes of the body", try, typ, p, got)
			}
			if got < 0 {
				head = append(head, p...)
				i := bytes.Index(head, []byte("\r\n\r\n"))
				if i < 0 {
					continue
				}
				resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(head[:i+4])), nil)
				if err != nil || resp.StatusCode != 200 {
					t.Fatalf("try %d: response %v %v", try, resp, err)
				}
				p, got = head[i+4:], 0
			}
			for j, ch := range p {
				if ch != pattern[(got+j)%len(pattern)] {
					t.Fatalf("try %d: body byte %d is %q", try, got+j, ch)
				}
			}
			got += len(p)
			if got >= next && asked < 16 {
				if err := c.write(c.keyUpdate(true)); err != nil {
					t.Fatal(err)
				}
				asked++
				before = c.keyUpdates
				next = got + 1<<20
			}
		}
		if got != size {
			t.Fatalf("try %d: body %d bytes, want %d", try, got, size)
		}
		// Requests that reach the server together are answered once.
		if c.keyUpdates <= before || c.keyUpdates > asked {
			t.Errorf("try %d: %d KeyUpdates in return for %d, %d of them before the last was asked for; want the last one answered",
				try, c.keyUpdates, asked, before)
		}
		t.Logf("try %d: %d KeyUpdates asked for, %d in return, during %d MiB", try, asked, c.keyUpdates, size>>20)
	}
}

// TestTLSKeyUpdate: a client KeyUpdate that asks for one in return gets
// it, and requests and responses go on under the new keys on both sides;
// one that asks for nothing gets nothing; close_notify is answered with
// close_notify.
func TestTLSKeyUpdate(t *testing.T) {
	b := backend(t, tlsBackend())
	addr, cc := tlsPlane(t, newPool(true, b), nil)
	c := dialRawTLS(t, addr, cc)
	get := func(path string, extra string) string {
		t.Helper()
		if err := c.write(c.seal(23, []byte("GET "+path+" HTTP/1.1\r\nHost: localhost\r\n"+extra+"\r\n"))); err != nil {
			t.Fatal(err)
		}
		var got []byte
		for !bytes.Contains(got, []byte("GET "+path+" ")) {
			typ, p, err := c.next()
			if err != nil || typ != 23 {
				t.Fatalf("%s: record %d %q, %v (so far %q)", path, typ, p, err, got)
			}
			got = append(got, p...)
		}
		return string(got)
	}
	get("/a", "")
	if err := c.write(c.keyUpdate(true)); err != nil {
		t.Fatal(err)
	}
	get("/b", "")
	if c.keyUpdates != 1 {
		t.Errorf("after a KeyUpdate asking for one: %d in return, want 1", c.keyUpdates)
	}
	if err := c.write(c.keyUpdate(false)); err != nil {
		t.Fatal(err)
	}
	get("/c", "")
	if c.keyUpdates != 1 {
		t.Errorf("after a KeyUpdate asking for none: %d in return, want still 1", c.keyUpdates)
	}
	if err := c.write(c.seal(21, []byte{1, 0})); err != nil {
		t.Fatal(err)
	}
	alert, data, err := c.alertAndEOF()
	if alert != 0 || len(data) != 0 || err != io.EOF {
		t.Errorf("after close_notify: alert %d, data %q, %v; want close_notify and EOF", alert, data, err)
	}
}
