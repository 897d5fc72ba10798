// Package tls13 is the TLS 1.3 record layer (RFC 8446, section 5) of
// baton's event loops: after crypto/tls has done a connection's handshake,
// a Reader opens the records the client sends and a Writer protects the
// ones the server sends, with the traffic secrets of that handshake. It
// does no I/O: records come in and go out as bytes, so a loop can keep
// them in its own buffers.
//
// Invariant: a Reader accepts exactly what crypto/tls's server accepts
// after a TLS 1.3 handshake, with the same bounds, and ends with the
// same alert (the exceptions are listed on Reader); a Writer's records
// are what crypto/tls's client opens.
package tls13
