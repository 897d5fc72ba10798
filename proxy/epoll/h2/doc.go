// Package h2 is the HTTP/2 server connection of the event loops
// (proxy/epoll), without I/O: a Conn is fed the bytes the client sent and
// gives the bytes to send back, and the loop drives it, one goroutine per
// connection at a time, never a goroutine of its own. It speaks RFC 9113
// with RFC 7541 header compression (x/net/http2/hpack), and turns each
// request into the HTTP/1.1 request a backend gets, exactly as the net/http
// plane (x/net/http2's server, httputil.ReverseProxy, baton's proxy
// Transport) would send it (Stream.AppendRequest; the differential fuzzer
// in this package checks it).
//
// How the loop drives a Conn:
//
//	c, err := h2.NewConn(&cfg)           // SETTINGS queued
//	n := c.Feed(in)                      // whole frames only: keep in[n:]
//	for s, ev := c.Next(); s != nil; s, ev = c.Next() { ... }
//	out := c.Output(); w := write(out); c.Written(w) // once per loop turn
//	timer at c.Deadline(), then c.Tick(now)
//	c.Drain() to shut down; c.Closed(): flush Output and close
//
// Per stream: EventRequest (its Request, AppendRequest for the backend),
// EventBody (Body, Consume after passing bytes on, BodyDone),
// EventWritable (Write took less than offered: offer the rest), and
// EventReset (abort the exchange). The response goes through WriteHeaders
// (1xx any number of times, then the final one), Write (DATA) and
// WriteTrailers, or Reset; Done gives the stream back.
//
// Invariants:
//   - Memory per connection is bounded, whatever the client sends: request
//     body held per stream by the stream window (StreamWindow; WINDOW_UPDATE
//     only for bytes the loop consumed), and by the connection window
//     (ConnWindow) for all of them; decoded request header fields by
//     MaxHeaderListSize per stream (more: 431), and the encoded block by
//     twice that and maxContinuations frames (more: GOAWAY
//     ENHANCE_YOUR_CALM); response DATA held by MaxOutput; control frames
//     queued for a client that does not read by maxControlOutput (more:
//     GOAWAY ENHANCE_YOUR_CALM); response header blocks by what the loop
//     gives (its backend header bound) per stream; streams by
//     MaxConcurrentStreams (more: RST_STREAM REFUSED_STREAM). An idle
//     connection holds no body, output or stream buffer.
//   - What is refused, and how: a malformed request (RFC 9113 §8: pseudo-
//     fields out of order, repeated, unknown or missing; upper-case or
//     invalid names; invalid values; connection-specific fields; TE other
//     than "trailers"; content-length invalid, or not the DATA's length;
//     trailers without END_STREAM or with pseudo-fields; :authority and
//     Host disagreeing, userinfo, a path net/http cannot parse; :protocol,
//     since SETTINGS_ENABLE_CONNECT_PROTOCOL is never advertised) gets
//     RST_STREAM PROTOCOL_ERROR and never reaches the loop; a protocol
//     violation of the connection (bad preface or frame sizes, frames on
//     idle streams, stream-ID reuse, window overflow, HPACK errors,
//     CONTINUATION out of place) gets GOAWAY with its RFC 9113 code; abuse
//     gets GOAWAY ENHANCE_YOUR_CALM: more than MaxGlitches frames that do no
//     work (PING, SETTINGS, PRIORITY, empty DATA and CONTINUATION, frames on
//     closed streams, refused streams; each completed request earns one
//     back), more than MaxResets client resets of requests the loop had
//     begun beyond those completed (rapid reset), or a header block past its
//     bounds (CONTINUATION flood).
//   - Backpressure both ways: the client sends a stream's body only as the
//     loop consumes it; the loop offers response bytes and Write takes only
//     what the client's windows, the output room and the stream's fair share
//     allow, then EventWritable says when to offer more.
//   - Time is the loop's: the engine reads Clock, reports Deadline, and
//     acts in Tick: ReadHeaderTimeout (preface, a header block begun),
//     IdleTimeout (GOAWAY NO_ERROR), WriteTimeout (a stream whose response
//     cannot move is reset INTERNAL_ERROR and reported TimedOut, freeing its
//     backend; a client that reads nothing at all ends the connection),
//     DrainTimeout (the final GOAWAY of a drain without the PING answer).
//   - Where the engine and the net/http plane part, by design (the fuzzer
//     skips these, see divergent): CONNECT is not forwarded
//     (ErrUnsupported: the loop answers 501); a content-length that is not
//     plain digits, disagrees with another, or is above 0 on a request that
//     ends with its HEADERS is malformed (x/net/http2 ignores it, or takes
//     0 and drops the body); connection-specific fields and a TE other than
//     "trailers" get RST_STREAM PROTOCOL_ERROR where x/net/http2 answers
//     400 (RFC 9113 §8.2.2, h2spec); a :path with a space in its query is refused
//     (the net/http plane passes a space in the query on raw, and the
//     backend gets a malformed request line). Carried over from the net/http plane:
//     OPTIONS * is answered 200 by the engine as net/http's server does;
//     request trailers are announced to the backend but not sent.
//   - Drain is RFC 9113 §6.8's: GOAWAY 2^31-1 and a PING, the final GOAWAY
//     naming the last stream once the PING comes back, streams up to it
//     finish, none after it is taken; the last stream ID never grows.
package h2
