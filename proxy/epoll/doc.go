// Package epoll is baton's event-loop data plane for HTTP/1.1 listeners,
// plain and TLS, on Linux epoll.
//
// Each loop is one goroutine locked to an OS thread, blocking in
// epoll_wait. A client connection and the backend connection serving its
// request sit in the same edge-triggered epoll set of the same loop, so a
// request never changes goroutine, takes a lock or crosses a channel;
// each loop keeps a LIFO pool of idle keep-alive connections per backend.
// Reads stop at the first short read (the socket is then empty and the
// next arrival raises a new edge), except after EPOLLRDHUP, when they go
// on to EOF.
//
// The loop speaks a strict, common subset of HTTP/1.1 itself, and writes
// to the backend exactly what the net/http plane writes (see parseRequest):
// GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS in origin form over
// HTTP/1.1 or HTTP/1.0, with well-formed header lines; pipelined; with a
// body framed by one Content-Length, or chunked (POST, PUT, PATCH).
// A body is streamed as it arrives, with backpressure both ways: the
// client is read only while the connection's input buffer (maxBuffered)
// has room, and that buffer is emptied only into the backend socket, so a
// connection holds at most that much of a body whatever its size. A
// request with a body, or any request that is not replayable, goes on a
// fresh backend connection with Connection: close, as through net/http's
// Transport, and is sent again only after a connection that could not be
// made. Expect: 100-continue holds the body back until the backend's 100
// Continue (passed on, like every 1xx answer to such a request) or the
// upstream's ExpectContinueTimeout, when the loop sends its own. An
// HTTP/1.0 client gets HTTP/1.0 answers, keep-alive only when it asked
// for it, and a chunked response decoded and delimited by closing.
// When an answer goes out before the client sent all of its body (the
// backend answered early, an error), the connection closes after it.
// An upstream sent the PROXY protocol (proxy.ProxiedUpstream) gets each
// request on a new connection of its own, never pooled, that begins with
// the header naming the client and the address it connected to (the
// accepted socket's, looked up once per connection), and says
// Connection: close, as net/http's Transport does on it.
//
// What the loop does not parse is not parsed twice: the connection, with
// the bytes already read, is handed over to net/http serving the same
// proxy.Handler, which keeps it until it closes. The hand-overs are
// deliberate: Upgrade (WebSocket) and CONNECT; methods other than those
// above; absolute-form and asterisk targets, and targets net/http would
// re-encode; HTTP versions other than 1.0 and 1.1; Expect other than
// 100-continue, or on HTTP/1.0; Transfer-Encoding other than a lone
// chunked on POST, PUT or PATCH over HTTP/1.1 (net/http's Transport probes
// a chunked body of other methods with a timer), or with Content-Length;
// duplicate or unusual Content-Length; TE, Trailer, Keep-Alive,
// Proxy-Connection and Proxy-* headers, Connection naming other headers;
// an HTTP/1.0 request with several Connection lines or without Host; and
// any malformed or oversized header. Both planes therefore answer
// malformed input alike, and the fuzzer in this package checks that what
// the loop does parse reaches the backend exactly as through net/http.
//
// With a TLSConfig, a front goroutine accepts and each handshake runs on
// a goroutine of its own with crypto/tls, through a connection wrapper
// that gives crypto/tls no byte beyond the record it reads (what the
// client sends after its Finished stays for the loop). Each handshake
// uses a clone of the tls.Config whose KeyLogWriter is that connection's
// own, so its traffic secrets go into memory with it and nowhere else (a
// client random is no identity: anyone can copy another's). A TLS 1.3
// connection that chose HTTP/1.1 (or nothing), with any of TLS 1.3's
// suites, then moves into a loop with its descriptor, its keys and
// sequence numbers (the session ticket crypto/tls sent is counted by
// opening the captured records, not assumed), and the loop protects its
// records itself with the record layer in internal/tls13, which takes
// exactly what crypto/tls would, with its bounds, and is tested against
// it (its doc says why it is safe to keep). A KeyUpdate that asks for
// one is answered at once, after the records already sealed and before
// what is sealed next; when that write empties the output, a backend
// paused for the client resumes as after any other. A protocol error
// ends the connection with its alert; nothing is sent after the peer's
// fatal alert; a response cut short by its backend ends with an
// internal_error alert, not the close_notify of a complete one. Out of
// file descriptors, a connection whose copy for a loop fails waits, as
// in the listen backlog, until one frees (or the drain begins: then it
// goes to the Fallback); Logger hears of it once per episode. Every other
// TLS connection (HTTP/2, TLS 1.2) goes to the Fallback as the
// *tls.Conn it is; a TLS connection a loop hands over goes on with the
// loop's keys (recordConn). Session tickets are crypto/tls's, so they
// resume across planes and generations alike.
//
// The Fallback (handoff.Server in baton) serves what is handed over, so
// WebSockets, streaming responses and HTTP/2 drain exactly as on the
// net/http plane (close frames, GOAWAY, the long drain deadline). The
// Server drains its loops first (they hand over until they stop), then the
// Fallback.
//
// The rules are proxy.Handler's, called through its plane seam: the same
// Pool (Pick counts a request in flight in the shared state table, Done
// releases it), the same hold limits and counters, the same retry rule,
// the same error answers (proxy.Failure), the same Observer, and the same
// passive health detection (proxy.PassiveUpstream: each attempt's status,
// or the error that ended it before one came, once). A held
// request parks in its loop; one goroutine per loop blocks in Pool.Wait
// and wakes the loop through an eventfd.
//
// Nothing on a loop blocks: health checks, control requests and
// configuration live elsewhere and reach it through the Pool's atomics.
// Error answers are logged on the loop, once per burst (a write to the
// log), as the net/http plane does.
package epoll
