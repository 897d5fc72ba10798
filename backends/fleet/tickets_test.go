package fleet

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// sink records the ticket keys a member applies.
type sink struct {
	mu   sync.Mutex
	keys []TicketKey
	sets int
}

func (s *sink) SetTicketKeys(keys []TicketKey) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = append([]TicketKey(nil), keys...)
	s.sets++
	return nil
}

func (s *sink) get() []TicketKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]TicketKey(nil), s.keys...)
}

func writeSecret(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fleet.secret")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTicketKeys: one elected member rotates the keys, every member
// applies the same ones, etcd holds them only sealed, a member with
// another secret says so and applies none, and when the rotator leaves
// another member takes over the rotation.
func TestTicketKeys(t *testing.T) {
	c := startCluster(t, 3, false)
	secret := writeSecret(t, "a shared secret of the fleet, 32+ bytes")
	sinks := map[string]*sink{}
	var ms []*testMember
	for _, n := range []string{"a", "b", "c"} {
		s := &sink{}
		sinks[n] = s
		ms = append(ms, c.join(t, n, newLocal("web"), func(cfg *Config, o *Options) {
			cfg.SecretFile = secret
			o.Tickets, o.TicketRotation, o.TicketKeep = s, 300*time.Millisecond, 3
		}))
	}
	same := func() bool {
		k := sinks["a"].get()
		if len(k) < 3 {
			return false
		}
		for _, s := range sinks {
			if g := s.get(); len(g) != len(k) || g[0].Key != k[0].Key {
				return false
			}
		}
		return true
	}
	waitFor(t, 10*time.Second, "every member applies the same 3 rotated keys", same)
	rotators := func() (names []string, idx int) {
		for i, m := range ms {
			if m.f.Status().Tickets.Rotator {
				names, idx = append(names, m.name), i
			}
		}
		return names, idx
	}
	var idx int
	waitFor(t, 5*time.Second, "exactly one rotator", func() bool {
		var names []string
		names, idx = rotators()
		return len(names) == 1
	})

	// etcd holds no key in the clear.
	resp, err := c.client().Get(context.Background(), DefaultPrefix+keyTickets)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("tickets in etcd: %v, %d keys", err, len(resp.Kvs))
	}
	for _, k := range sinks["a"].get() {
		if bytes.Contains(resp.Kvs[0].Value, k.Key[:16]) {
			t.Fatal("a ticket key is in etcd unencrypted")
		}
	}

	// A member with another secret.
	other := &sink{}
	d := c.join(t, "d", newLocal("web"), func(cfg *Config, o *Options) {
		cfg.SecretFile = writeSecret(t, "another secret, also long enough")
		o.Tickets, o.TicketRotation = other, 300*time.Millisecond
	})
	waitFor(t, 5*time.Second, "d reports the wrong secret", func() bool {
		return strings.Contains(d.f.Status().Tickets.Error, "sealed with another secret_file")
	})
	if len(other.get()) != 0 {
		t.Error("d applied keys it cannot have decrypted")
	}

	// The rotator leaves: another takes over and the keys go on rotating.
	first := ms[idx]
	first.leave()
	left := time.Now()
	rest := append(append([]*testMember(nil), ms[:idx]...), ms[idx+1:]...)
	waitFor(t, 10*time.Second, "another member rotates", func() bool {
		for _, m := range rest {
			if m.f.Status().Tickets.Rotator {
				return true
			}
		}
		return false
	})
	s := sinks[rest[0].name]
	waitFor(t, 10*time.Second, "a key made after the rotator left", func() bool {
		k := s.get()
		return len(k) > 0 && k[0].Created.After(left)
	})
}

// TestSealer: sealed keys open with the same secret and prefix only;
// another secret is named as such, an altered blob refused.
func TestSealer(t *testing.T) {
	s, err := newSealer([]byte("the fleet secret, long enough"), DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	keys := []TicketKey{{Created: time.Unix(100, 5)}, {Created: time.Unix(50, 0)}}
	keys[0].Key[0], keys[1].Key[31] = 1, 2
	blob := s.seal(encodeKeys(keys))
	plain, err := s.open(blob)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeKeys(plain)
	if err != nil || len(got) != 2 || got[0].Key != keys[0].Key || !got[1].Created.Equal(keys[1].Created) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	other, _ := newSealer([]byte("another secret, long enough.."), DefaultPrefix)
	if _, err := other.open(blob); !errors.Is(err, ErrWrongSecret) {
		t.Errorf("other secret: %v, want ErrWrongSecret", err)
	}
	otherFleet, _ := newSealer([]byte("the fleet secret, long enough"), "/other/")
	if _, err := otherFleet.open(blob); !errors.Is(err, ErrWrongSecret) {
		t.Errorf("other prefix: %v, want ErrWrongSecret", err)
	}
	bad := bytes.Clone(blob)
	bad[len(bad)-1] ^= 1
	if _, err := s.open(bad); err == nil || !strings.Contains(err.Error(), "do not decrypt") {
		t.Errorf("altered: %v", err)
	}
	if _, err := s.open([]byte("plain")); err == nil {
		t.Error("a short blob opened")
	}
}
