package epoll

import (
	"bytes"
	"crypto/tls"
	"encoding/hex"
	"errors"
)

// connKeys receives the traffic secrets of one handshake: crypto/tls
// writes them to the KeyLogWriter of the tls.Config it handshakes with,
// and the front gives each connection a Config of its own (configFor)
// whose writer is that connection's connKeys. The secrets stay in memory,
// with the connection; nothing else is written anywhere.
type connKeys struct {
	client, server []byte
}

var (
	labelClient = []byte("CLIENT_TRAFFIC_SECRET_0 ")
	labelServer = []byte("SERVER_TRAFFIC_SECRET_0 ")
)

// Write takes one NSS key log line, as crypto/tls writes them.
func (k *connKeys) Write(line []byte) (int, error) {
	n := len(line)
	var dst *[]byte
	switch {
	case bytes.HasPrefix(line, labelClient):
		line, dst = line[len(labelClient):], &k.client
	case bytes.HasPrefix(line, labelServer):
		line, dst = line[len(labelServer):], &k.server
	default:
		return n, nil
	}
	_, sec, ok := bytes.Cut(bytes.TrimSuffix(line, []byte("\n")), []byte(" "))
	if !ok {
		return n, nil
	}
	secret := make([]byte, hex.DecodedLen(len(sec)))
	if _, err := hex.Decode(secret, sec); err == nil {
		*dst = secret
	}
	return n, nil
}

// configFor is the Config base handshakes with for the connection hello
// came on: a copy whose KeyLogWriter is that connection's own, so no
// other handshake's secrets can land with it (a client random is no
// identity: anyone can send a copy of someone else's). The session ticket
// keys are base's (Clone copies them), as crypto/tls does for a Config
// from GetConfigForClient.
func configFor(base *tls.Config, userGet func(*tls.ClientHelloInfo) (*tls.Config, error)) func(*tls.ClientHelloInfo) (*tls.Config, error) {
	return func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		hc, ok := hello.Conn.(*hsConn)
		if !ok {
			return nil, errors.New("epoll: handshake on a connection the front did not make")
		}
		cfg := base
		if userGet != nil {
			c, err := userGet(hello)
			if err != nil {
				return nil, err
			}
			if c != nil {
				cfg = c
			}
		}
		cfg = cfg.Clone()
		cfg.GetConfigForClient = nil
		cfg.KeyLogWriter = &hc.keys
		return cfg, nil
	}
}
