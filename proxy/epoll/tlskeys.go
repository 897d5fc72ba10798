package epoll

import (
	"bytes"
	"encoding/hex"
	"sync"
)

// keyLog receives the traffic secrets crypto/tls writes to a
// tls.Config's KeyLogWriter, and keeps those of the handshakes a front is
// waiting for (by client random), in memory only, until the handshake
// takes them. Secrets of any other handshake are dropped unread.
type keyLog struct {
	mu      sync.Mutex
	pending map[[32]byte]*secrets
}

// secrets are one handshake's application traffic secrets.
type secrets struct {
	client, server []byte
	ambiguous      bool // two handshakes used the same client random
}

func newKeyLog() *keyLog { return &keyLog{pending: map[[32]byte]*secrets{}} }

// expect registers a handshake by its client random.
func (k *keyLog) expect(random [32]byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if s, ok := k.pending[random]; ok {
		// A copied random (a replayed ClientHello): neither handshake
		// can tell which secrets are its own; both go to crypto/tls.
		s.ambiguous = true
		return
	}
	k.pending[random] = &secrets{}
}

// take returns and forgets the secrets of random's handshake; nil if
// they are not both there or ambiguous.
func (k *keyLog) take(random [32]byte) *secrets {
	k.mu.Lock()
	defer k.mu.Unlock()
	s, ok := k.pending[random]
	if !ok {
		return nil
	}
	delete(k.pending, random)
	if s.ambiguous || s.client == nil || s.server == nil {
		return nil
	}
	return s
}

// drop forgets random's handshake (it failed or was taken).
func (k *keyLog) drop(random [32]byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.pending, random)
}

var (
	labelClient = []byte("CLIENT_TRAFFIC_SECRET_0 ")
	labelServer = []byte("SERVER_TRAFFIC_SECRET_0 ")
)

// Write takes one NSS key log line, as crypto/tls writes them.
func (k *keyLog) Write(line []byte) (int, error) {
	n := len(line)
	var server bool
	switch {
	case bytes.HasPrefix(line, labelClient):
		line = line[len(labelClient):]
	case bytes.HasPrefix(line, labelServer):
		line, server = line[len(labelServer):], true
	default:
		return n, nil
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	r, sec, ok := bytes.Cut(line, []byte(" "))
	var random [32]byte
	if !ok || hex.DecodedLen(len(r)) != 32 {
		return n, nil
	}
	if _, err := hex.Decode(random[:], r); err != nil {
		return n, nil
	}
	secret := make([]byte, hex.DecodedLen(len(sec)))
	if _, err := hex.Decode(secret, sec); err != nil {
		return n, nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if s, ok := k.pending[random]; ok {
		if server {
			s.server = secret
		} else {
			s.client = secret
		}
	}
	return n, nil
}
