// Package tls13 is the TLS 1.3 record layer (RFC 8446, section 5) of
// baton's event loops: after crypto/tls has done a connection's handshake,
// a Reader opens the records the client sends and a Writer protects the
// ones the server sends, with the traffic secrets of that handshake. It
// does no I/O: records come in and go out as bytes, so a loop keeps them
// in its own buffers and never blocks on them.
//
// Invariant: a Reader accepts exactly what crypto/tls's server accepts
// after a TLS 1.3 handshake and ends, where crypto/tls ends, with the same
// alert (the few exceptions, where it ends earlier, are listed on Reader);
// a Writer's records are what crypto/tls's client opens.
//
// Why a record layer of baton's own is safe to keep. It is small and does
// little: the handshake, certificates, session tickets and every choice
// of parameters stay with crypto/tls; this package only seals and opens
// AEAD records (AES-GCM from the standard library, ChaCha20-Poly1305 from
// golang.org/x/crypto), follows KeyUpdates and reads alerts. What a peer
// may send after the handshake is closed: application data, alerts, and
// KeyUpdate as the only handshake message, whole or split across records
// but ending its record. Everything else ends the connection with an
// alert. Its bounds are crypto/tls's: records of at most 2^14+256 bytes
// holding at most 2^14+1 of plaintext; at most MaxUseless (16) records in
// a row that carry no data (KeyUpdates, empty records, user_canceled,
// change_cipher_spec), so a flood of them ends after the 17th; one
// KeyUpdate in answer until the next application data, however many ask
// for one (RFC 8446 section 4.6.3), so nothing piles up for a client that
// does not read; a KeyUpdate of its own after DefaultRekeyAfter records
// under one key (the AEAD limits of section 5.5), so no sequence number
// comes near its wrap, and a Reader stops before its own would. A Reader's
// memory is five bytes of a split KeyUpdate; the caller holds at most one
// record in part.
//
// How it is tested: against crypto/tls itself, on both sides. TestReader
// sends every kind of client record (each size up to 2^14+256 and beyond,
// padding up to and past the limit, empty and padding-only records,
// KeyUpdates whole, split byte by byte and doubled, every alert, other
// handshake messages, change_cipher_spec, corrupted bytes) to a Reader,
// whole, a byte at a time and in random pieces, and to crypto/tls's server
// on a real connection, and compares the data and the alert. FuzzReader
// does the same with random streams and splits, FuzzWriter sends a
// Writer's records (KeyUpdates asked for or not, rekeying after a few
// records) in random pieces to crypto/tls's client, whose answers come
// back through a Reader; both run in `make test`. TestChaCha20Poly1305
// runs the tests again where crypto/tls chooses ChaCha20-Poly1305. The
// loops' use of it (buffers, writes that stop half way through a record,
// KeyUpdates during a download, floods) is tested in proxy/epoll and, with
// openssl against the baton binary, in cmd/baton.
package tls13
