package proxy

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// TestDialGate: at most Max connections are opening; a slot comes back
// when the backend first answers, when the connection closes, or
// ConnectingFor after it was made; a dial whose context ends while it
// waits fails with the context's error and takes no slot.
func TestDialGate(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	g := &DialGate{Max: 2, ConnectingFor: time.Hour}
	dial := func(ctx context.Context) (net.Conn, error) { return g.DialContext(ctx, "tcp", ln.Addr().String()) }
	ctx := context.Background()
	c1, err := dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := dial(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Both slots taken: a third dial waits until its context ends.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = dial(short)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("third dial: %v, want the context's deadline", err)
	}
	var op *net.OpError
	if errors.As(err, &op) {
		t.Errorf("a dial that never got its turn is reported as a dial error: %v", err)
	}

	// The backend answers on c1: its slot comes back, a waiting dial goes.
	third := make(chan error, 1)
	go func() {
		c, err := dial(ctx)
		if err == nil {
			defer c.Close()
		}
		third <- err
	}()
	waitGate(t, func() bool { return g.Waiting() == 1 })
	s1 := <-accepted
	defer s1.Close()
	if _, err := s1.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := c1.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if err := <-third; err != nil {
		t.Fatalf("dial after a slot came back: %v", err)
	}

	// Closing c2 gives its slot back too.
	c2.Close()
	waitGate(t, func() bool { return len(g.slots) == 0 }) // the third closed its own
	c1.Close()

	// Without an answer, a slot comes back after ConnectingFor.
	g2 := &DialGate{Max: 1, ConnectingFor: 20 * time.Millisecond}
	c, err := g2.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c, err = g2.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("second dial after ConnectingFor: %v", err)
	}
	c.Close()
	if g, e := g2.Waited(), int64(1); g != e {
		t.Errorf("Waited = %d, want %d", g, e)
	}
}

func waitGate(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("gate never reached the expected state")
		}
		time.Sleep(time.Millisecond)
	}
}
