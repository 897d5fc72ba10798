package fleet

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// TicketKey is one TLS session ticket key of the fleet.
type TicketKey struct {
	Created time.Time
	Key     [32]byte
}

// TicketSink takes the fleet's TLS session ticket keys, newest first: the
// first encrypts new tickets, every one decrypts. handoff.TicketKeys is
// meant to implement it (store them in its memfd for the next generation,
// apply them to its tls.Configs) and, in a fleet, not rotate on its own.
type TicketSink interface {
	SetTicketKeys(keys []TicketKey) error
}

// ErrWrongSecret: the ticket keys in etcd were sealed with another
// secret_file.
var ErrWrongSecret = errors.New("fleet: ticket keys in etcd were sealed with another secret_file")

// TicketStatus is the state of the shared ticket keys on this member.
type TicketStatus struct {
	Shared  bool      `json:"shared"` // secret_file set and a sink given
	Keys    int       `json:"keys"`   // keys applied
	Newest  time.Time `json:"newest,omitzero"`
	Rotator bool      `json:"rotator"` // this member rotates them (leads the election)
	Error   string    `json:"error,omitempty"`
}

type ticketState struct {
	keys    int
	newest  time.Time
	rotator bool
	err     error
}

func (t ticketState) status(shared bool) TicketStatus {
	s := TicketStatus{Shared: shared, Keys: t.keys, Newest: t.newest, Rotator: t.rotator}
	if t.err != nil {
		s.Error = t.err.Error()
	}
	return s
}

const (
	sealMagic   = "BTK1"
	sealIDLen   = 8
	sealHeader  = len(sealMagic) + sealIDLen + 12 // magic, key id, GCM nonce
	keyEntryLen = 8 + 32
	maxKeys     = 64
)

// sealer encrypts the ticket keys with AES-256-GCM under a key derived by
// HKDF-SHA256 from the fleet secret (the prefix is the salt, so two fleets
// with one secret still have different keys). A sealed blob names the
// derived key by an id, so a member with another secret says so instead of
// "authentication failed".
type sealer struct {
	aead cipher.AEAD
	id   []byte
	aad  []byte
}

func newSealer(secret []byte, prefix string) (*sealer, error) {
	key, err := hkdf.Key(sha256.New, secret, []byte(prefix), "baton fleet ticket keys v1", 32)
	if err != nil {
		return nil, fmt.Errorf("fleet: ticket keys: %w", err)
	}
	defer clear(key)
	id, err := hkdf.Key(sha256.New, secret, []byte(prefix), "baton fleet key id v1", sealIDLen)
	if err != nil {
		return nil, fmt.Errorf("fleet: ticket keys: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("fleet: ticket keys: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("fleet: ticket keys: %w", err)
	}
	aad := append([]byte(sealMagic), id...)
	aad = append(aad, prefix+keyTickets...)
	return &sealer{aead: aead, id: id, aad: aad}, nil
}

func (s *sealer) seal(plain []byte) []byte {
	out := make([]byte, sealHeader, sealHeader+len(plain)+s.aead.Overhead())
	copy(out, sealMagic)
	copy(out[len(sealMagic):], s.id)
	nonce := out[len(sealMagic)+sealIDLen : sealHeader]
	_, _ = rand.Read(nonce)
	return s.aead.Seal(out, nonce, plain, s.aad)
}

func (s *sealer) open(blob []byte) ([]byte, error) {
	if len(blob) < sealHeader+s.aead.Overhead() || string(blob[:len(sealMagic)]) != sealMagic {
		return nil, errors.New("fleet: ticket keys in etcd: not a sealed key set")
	}
	if id := blob[len(sealMagic) : len(sealMagic)+sealIDLen]; string(id) != string(s.id) {
		return nil, fmt.Errorf("%w (their key id %x, ours %x): the same secret_file is needed on every member", ErrWrongSecret, id, s.id)
	}
	plain, err := s.aead.Open(nil, blob[len(sealMagic)+sealIDLen:sealHeader], blob[sealHeader:], s.aad)
	if err != nil {
		return nil, fmt.Errorf("fleet: ticket keys in etcd: do not decrypt with secret_file (altered?): %w", err)
	}
	return plain, nil
}

func encodeKeys(keys []TicketKey) []byte {
	b := make([]byte, 0, len(keys)*keyEntryLen)
	for _, k := range keys {
		b = binary.LittleEndian.AppendUint64(b, uint64(k.Created.UnixNano()))
		b = append(b, k.Key[:]...)
	}
	return b
}

func decodeKeys(b []byte) ([]TicketKey, error) {
	if len(b) == 0 || len(b)%keyEntryLen != 0 || len(b)/keyEntryLen > maxKeys {
		return nil, errors.New("fleet: ticket keys in etcd: bad key set")
	}
	keys := make([]TicketKey, len(b)/keyEntryLen)
	for i := range keys {
		e := b[i*keyEntryLen:]
		keys[i].Created = time.Unix(0, int64(binary.LittleEndian.Uint64(e)))
		copy(keys[i].Key[:], e[8:keyEntryLen])
	}
	return keys, nil
}

func (f *Fleet) rotation() (time.Duration, int) {
	r, k := f.opts.TicketRotation, f.opts.TicketKeep
	if r <= 0 {
		r = time.Hour
	}
	if k <= 0 {
		k = 4
	}
	return r, min(k, maxKeys)
}

// applyTickets opens a sealed key set from etcd and gives it to the sink;
// on an error the keys applied before stay.
func (f *Fleet) applyTickets(blob []byte) {
	if f.seal == nil {
		return
	}
	keys, err := f.openKeys(blob)
	if err == nil {
		err = f.opts.Tickets.SetTicketKeys(keys)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		if f.tickets.err == nil || f.tickets.err.Error() != err.Error() {
			f.log.Error("fleet: shared ticket keys not applied; the last ones stay", "err", err)
		}
		f.tickets.err = err
		return
	}
	f.tickets.err = nil
	f.tickets.keys, f.tickets.newest = len(keys), keys[0].Created
}

func (f *Fleet) openKeys(blob []byte) ([]TicketKey, error) {
	plain, err := f.seal.open(blob)
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	return decodeKeys(plain)
}

// rotator campaigns for the ticket key election under the member lease
// and, while it leads, adds a key every rotation (dropping the oldest
// beyond keep). A next generation campaigning with the same lease resumes
// the lead. It returns when ctx ends.
func (f *Fleet) rotator(ctx context.Context, lease Lease) {
	for ctx.Err() == nil {
		ld, err := f.c.Campaign(ctx, lease, electTicket)
		if err != nil {
			if !sleepCtx(ctx, time.Second) {
				return
			}
			continue
		}
		f.setRotator(true)
		err = f.lead(ctx, ld)
		f.setRotator(false)
		if errors.Is(err, ErrWrongSecret) {
			// why: another member may have the right secret: let it lead.
			rctx, cancel := f.call(context.WithoutCancel(ctx))
			_ = ld.Resign(rctx)
			cancel()
			if !sleepCtx(ctx, 30*time.Second) {
				return
			}
		}
	}
}

func (f *Fleet) setRotator(on bool) {
	f.mu.Lock()
	f.tickets.rotator = on
	f.mu.Unlock()
}

func (f *Fleet) lead(ctx context.Context, ld Leadership) error {
	for {
		next, err := f.rotateOnce(ctx, ld)
		switch {
		case errors.Is(err, ErrNotLeader), errors.Is(err, ErrWrongSecret):
			return err
		case err != nil:
			f.mu.Lock()
			f.tickets.err = err
			f.mu.Unlock()
			next = time.Second
		}
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-ld.Lost():
			t.Stop()
			return ErrNotLeader
		case <-t.C:
		}
	}
}

// rotateOnce adds a key if the newest is due and says when the next is.
func (f *Fleet) rotateOnce(ctx context.Context, ld Leadership) (time.Duration, error) {
	rotation, keep := f.rotation()
	cctx, cancel := f.call(ctx)
	kv, ok, err := f.c.Get(cctx, keyTickets)
	cancel()
	if err != nil {
		return 0, err
	}
	var keys []TicketKey
	if ok {
		if keys, err = f.openKeys(kv.Value); err != nil {
			f.mu.Lock()
			f.tickets.err = err
			f.mu.Unlock()
			return 0, err // never overwrite keys sealed with another secret
		}
	}
	now := time.Now()
	if len(keys) == 0 || now.Sub(keys[0].Created) >= rotation {
		nk := TicketKey{Created: now}
		_, _ = rand.Read(nk.Key[:])
		keys = append([]TicketKey{nk}, keys...)
		keys = keys[:min(len(keys), keep)]
		plain := encodeKeys(keys)
		blob := f.seal.seal(plain)
		clear(plain)
		cctx, cancel := f.call(ctx)
		err := ld.Put(cctx, keyTickets, blob)
		cancel()
		if err != nil {
			return 0, err
		}
		f.log.Info("fleet: ticket keys rotated", "keys", len(keys))
	}
	return keys[0].Created.Add(rotation).Sub(now), nil
}

// sleepCtx waits d or until ctx ends; false if ctx ended.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
