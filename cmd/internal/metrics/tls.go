package metrics

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
)

// Reasons a TLS handshake failed: the reason label of
// baton_tls_handshake_failures_total. Part of the layout: append only.
const (
	TLSTimeout         = iota // the client did not finish in time
	TLSEOF                    // the client closed or reset the connection
	TLSNotTLS                 // the first bytes were no TLS record (plain HTTP on the TLS port)
	TLSProtocolVersion        // no TLS version in common (a TLS 1.0 client)
	TLSNoSharedCipher         // no cipher suite, curve or signature scheme in common
	TLSNoALPN                 // none of the client's application protocols (ALPN) is served
	TLSBadCertificate         // the client rejected baton's certificate (bad, expired, unsupported, ...)
	TLSUnknownCA              // the client does not trust the certificate's issuer
	TLSOther                  // anything else (other alerts, a close by baton at the drain deadline)
	nTLSReasons
)

// TLSReasonNames are the reason label's values, by reason.
var TLSReasonNames = [nTLSReasons]string{"timeout", "eof", "not_tls", "protocol_version", "no_shared_cipher",
	"no_application_protocol", "bad_certificate", "unknown_ca", "other"}

// TLSReason classifies the error of a failed server handshake by
// crypto/tls. Alerts the client sent arrive as "remote error: tls: ...";
// what the server found itself is in crypto/tls's error text, which is
// what there is to go by.
func TLSReason(err error) int {
	var re tls.RecordHeaderError
	var ne net.Error
	var oe *net.OpError
	switch {
	case errors.As(err, &re):
		return TLSNotTLS
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return TLSTimeout
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		return TLSEOF
	case errors.As(err, &oe) && oe.Op == "remote error" && oe.Err != nil:
		switch msg := oe.Err.Error(); msg {
		case "tls: unknown certificate authority":
			return TLSUnknownCA
		case "tls: bad certificate", "tls: unsupported certificate", "tls: revoked certificate",
			"tls: expired certificate", "tls: unknown certificate", "tls: access denied":
			return TLSBadCertificate
		case "tls: protocol version not supported":
			return TLSProtocolVersion
		case "tls: no application protocol":
			return TLSNoALPN
		case "tls: user canceled":
			return TLSEOF
		}
		return TLSOther
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "unsupported versions") || strings.Contains(msg, "version older than") ||
		strings.Contains(msg, "inappropriate protocol fallback") || strings.Contains(msg, "mutually supported protocol versions"):
		return TLSProtocolVersion
	case strings.Contains(msg, "supported by both client and server") || strings.Contains(msg, "incompatible point formats") ||
		strings.Contains(msg, "any of the certificate's signature algorithms"):
		return TLSNoSharedCipher
	case strings.Contains(msg, "unsupported application protocols"):
		return TLSNoALPN
	}
	return TLSOther
}

// TLSAlertReason is the reason for a handshake the client ended with the
// alert desc (RFC 8446 section 6). A TLS 1.3 client that rejects the
// certificate sends its alert in the clear, before it has keys: crypto/tls,
// which expects it encrypted, reports "bad record MAC", so the caller
// reads the alert off the wire and asks this.
func TLSAlertReason(desc uint8) int {
	switch desc {
	case 48: // unknown_ca
		return TLSUnknownCA
	case 42, 43, 44, 45, 46, 49: // bad, unsupported, revoked, expired, unknown certificate; access denied
		return TLSBadCertificate
	case 70: // protocol_version
		return TLSProtocolVersion
	case 120: // no_application_protocol
		return TLSNoALPN
	case 0, 90: // close_notify, user_canceled
		return TLSEOF
	}
	return TLSOther
}

// RecordHandshake counts a TLS handshake that was done, resumed (with a
// session ticket) or full.
func (t *Table) RecordHandshake(resumed bool) {
	if resumed {
		atomic.AddUint64(&t.g.tlsHandshakes[1], 1)
	} else {
		atomic.AddUint64(&t.g.tlsHandshakes[0], 1)
	}
}

// RecordHandshakeFailure counts a failed TLS handshake by reason (one of
// the TLS reason constants).
func (t *Table) RecordHandshakeFailure(reason int) {
	if reason < 0 || reason >= nTLSReasons {
		reason = TLSOther
	}
	atomic.AddUint64(&t.g.tlsFailures[reason], 1)
}
