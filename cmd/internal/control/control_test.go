package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// flakyListener fails its first fails Accepts with err, then hands out the
// connections sent on connC until it is closed.
type flakyListener struct {
	err   error
	fails int
	connC chan net.Conn

	mu       sync.Mutex
	accepts  int
	closed   bool
	closedC  chan struct{}
	closeOne sync.Once
}

func newFlakyListener(err error, fails int) *flakyListener {
	return &flakyListener{err: err, fails: fails, connC: make(chan net.Conn), closedC: make(chan struct{})}
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	l.accepts++
	n := l.accepts
	l.mu.Unlock()
	select {
	case <-l.closedC:
		return nil, net.ErrClosed
	default:
	}
	if n <= l.fails {
		return nil, l.err
	}
	select {
	case c := <-l.connC:
		return c, nil
	case <-l.closedC:
		return nil, net.ErrClosed
	}
}

func (l *flakyListener) Close() error {
	l.closeOne.Do(func() { close(l.closedC) })
	return nil
}

func (l *flakyListener) Addr() net.Addr { return &net.UnixAddr{Name: "flaky", Net: "unix"} }

func (l *flakyListener) acceptCalls() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.accepts
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func acceptErr(errno syscall.Errno) error {
	return &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", errno)}
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestServeRetriesAccept is issue 7, item 4: one EMFILE from accept4 ended
// Serve, and the control socket never answered again. Serve now pauses
// and retries every failed accept (5 ms doubling), logs the episode once
// when it begins and once when it ends, and returns only when stopped.
func TestServeRetriesAccept(t *testing.T) {
	for _, tc := range []struct {
		name  string
		errno syscall.Errno
	}{
		{"EMFILE", syscall.EMFILE},
		{"ENFILE", syscall.ENFILE},
		{"ENOBUFS", syscall.ENOBUFS},
		{"ENOMEM", syscall.ENOMEM},
		{"ECONNABORTED", syscall.ECONNABORTED},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const fails = 5 // pauses of 5+10+20+40+80 ms
			var logs syncBuffer
			ln := newFlakyListener(acceptErr(tc.errno), fails)
			s := &Server{
				Handler: func(ctx context.Context, req Request) Response { return Response{OK: true} },
				Logger:  slog.New(slog.NewTextHandler(&logs, nil)),
			}
			served := make(chan error, 1)
			go func() { served <- s.Serve(ln) }()

			client, server := net.Pipe()
			defer client.Close()
			select {
			case ln.connC <- server:
			case err := <-served:
				t.Fatalf("Serve returned %v after %d accept calls, want it to keep accepting", err, ln.acceptCalls())
			case <-time.After(10 * time.Second):
				t.Fatal("no accept within 10s")
			}
			_ = client.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := client.Write([]byte(`{"cmd":"status"}` + "\n")); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(client).ReadBytes('\n')
			if err != nil {
				t.Fatalf("reading the response: %v", err)
			}
			var resp Response
			if err := json.Unmarshal(line, &resp); err != nil || !resp.OK {
				t.Fatalf("response %q (%v), want ok", line, err)
			}
			if g, e := ln.acceptCalls(), fails+1; g < e {
				t.Errorf("accept called %d times, want at least %d", g, e)
			}
			log := logs.String()
			if g, e := strings.Count(log, "cannot accept connections"), 1; g != e {
				t.Errorf("%d lines saying accept failed, want %d:\n%s", g, e, log)
			}
			if !strings.Contains(log, tc.errno.Error()) {
				t.Errorf("log does not name the error %q:\n%s", tc.errno.Error(), log)
			}
			if g, e := strings.Count(log, "accepting connections again"), 1; g != e {
				t.Errorf("%d lines saying accept works again, want %d:\n%s", g, e, log)
			}
			if !strings.Contains(log, "failed_accepts=5") {
				t.Errorf("log does not count 5 failed accepts:\n%s", log)
			}

			s.StopAccepting()
			select {
			case err := <-served:
				if err != nil {
					t.Errorf("Serve after StopAccepting: %v, want nil", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Serve did not return within 10s of StopAccepting")
			}
		})
	}
}

// TestStopDuringAcceptBackoff: StopAccepting ends Serve at once, also in
// the middle of a 1 s pause between failed accepts.
func TestStopDuringAcceptBackoff(t *testing.T) {
	ln := newFlakyListener(acceptErr(syscall.EMFILE), 1<<30)
	s := &Server{Handler: func(ctx context.Context, req Request) Response { return Response{OK: true} }}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	// Eight pauses (5 ms ... 640 ms) make the next one 1 s.
	waitUntil(t, 20*time.Second, "nine failed accepts", func() bool { return ln.acceptCalls() >= 9 })
	start := time.Now()
	s.StopAccepting()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve after StopAccepting: %v, want nil", err)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Errorf("Serve returned %s after StopAccepting; the pause was not cut short", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return within 10s of StopAccepting")
	}
	if g, e := ln.acceptCalls(), 9; g > e+1 {
		t.Errorf("accept called %d times, want no more than %d after StopAccepting", g, e+1)
	}
}
