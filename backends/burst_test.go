package backends

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// smallBacklogListener listens on a loopback port with the given listen
// backlog (Go's net.Listen always asks for the maximum).
func smallBacklogListener(t *testing.T, backlog int) (net.Listener, int) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "small-backlog")
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	return ln, fd
}

// pausedListener accepts nothing until resumeC is closed.
type pausedListener struct {
	net.Listener
	resumeC chan struct{}
}

func (l *pausedListener) Accept() (net.Conn, error) {
	<-l.resumeC
	return l.Listener.Accept()
}

// acceptQueue reports how many connections wait in a listening socket's
// accept queue (tcpi_unacked, for a listener).
func acceptQueue(t *testing.T, ln net.Listener) int {
	t.Helper()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var serr error
	err = rc.Control(func(fd uintptr) {
		var info *unix.TCPInfo
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if serr == nil {
			n = int(info.Unacked)
		}
	})
	if err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	return n
}

// TestBurstDoesNotOverflowBacklog is issue 7, item 6: requests held during
// a restart were released all at once, each dialled a new connection, the
// backend's listen backlog overflowed, the kernel dropped SYNs, and those
// requests waited for a SYN retransmit (1 s, then 3 s): multi-second tails.
// Here a backend with a backlog of 16 does not accept while 120 requests
// (GETs on the pooled transport, POSTs on fresh connections) dial it at
// once. With max_connecting 8, only 8 connections are ever queued on the
// backend; the rest wait in baton and every request is answered well
// within the 1 s a dropped SYN costs.
func TestBurstDoesNotOverflowBacklog(t *testing.T) {
	const (
		backlog  = 16 // the kernel queues backlog+1
		maxConn  = 8
		gets     = 100
		posts    = 20
		requests = gets + posts
	)
	inner, _ := smallBacklogListener(t, backlog)
	ln := &pausedListener{Listener: inner, resumeC: make(chan struct{})}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	table, err := NewStateTable()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { table.Close() })
	cfg := Config{Name: "web", URL: "http://" + inner.Addr().String(), MaxConnecting: maxConn}.Normalize()
	s, err := New([]Config{cfg}, table, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	b, _ := s.Lookup("web")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var (
		mu      sync.Mutex
		doneAt  []time.Time
		errs    []string
		wg      sync.WaitGroup
		resumed time.Time
	)
	for i := range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			method, body, replay := http.MethodGet, io.Reader(nil), true
			if i >= gets {
				method, body, replay = http.MethodPost, strings.NewReader("x=1"), false
			}
			req, _ := http.NewRequestWithContext(ctx, method, "http://"+b.Addr()+"/", body)
			resp, err := b.Transport(replay).RoundTrip(req)
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", method, err))
			}
			doneAt = append(doneAt, time.Now())
		}()
	}
	// Until the backend accepts, the first maxConn connections fill its
	// queue and the others wait in the gate.
	waitQueued := time.Now().Add(10 * time.Second)
	for acceptQueue(t, inner) < maxConn || b.gate.Waiting() < requests-maxConn {
		if time.Now().After(waitQueued) {
			t.Fatalf("accept queue %d, %d dials waiting; want %d and %d", acceptQueue(t, inner), b.gate.Waiting(), maxConn, requests-maxConn)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if q := acceptQueue(t, inner); q > maxConn {
		t.Errorf("%d connections queued on the backend, want at most max_connecting %d", q, maxConn)
	}
	resumed = time.Now()
	close(ln.resumeC)
	wg.Wait()

	if len(errs) > 0 {
		t.Errorf("%d of %d requests failed, e.g. %s", len(errs), requests, errs[0])
	}
	var slowest time.Duration
	for _, at := range doneAt {
		slowest = max(slowest, at.Sub(resumed))
	}
	t.Logf("all %d requests answered within %s of the backend accepting", requests, slowest.Round(time.Millisecond))
	if slowest >= 900*time.Millisecond {
		t.Errorf("slowest request took %s after the backend began accepting; a dropped SYN costs 1 s", slowest)
	}
}
