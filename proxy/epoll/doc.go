// Package epoll is baton's event-loop data plane for plain HTTP/1.1
// listeners, on Linux epoll.
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
// The loop speaks a strict, common subset of HTTP/1.1 itself: GET and
// HEAD requests in origin form, without a body, with well-formed header
// lines. Anything else (a body, Expect, Upgrade, HTTP/1.0, an odd header,
// an oversized one) is not parsed twice: the connection, with the bytes
// already read, is handed over to net/http serving the same proxy.Handler,
// which keeps it until it closes. Both planes therefore answer malformed
// input alike, and the fuzzer in this package checks that what the loop
// does parse reaches the backend exactly as through net/http.
//
// The rules are proxy.Handler's, called through its plane seam: the same
// Pool (Pick counts a request in flight in the shared state table, Done
// releases it), the same hold limits and counters, the same retry rule,
// the same error answers (proxy.Failure) and the same Observer. A held
// request parks in its loop; one goroutine per loop blocks in Pool.Wait
// and wakes the loop through an eventfd.
//
// Nothing on a loop blocks: health checks, control requests and
// configuration live elsewhere and reach it through the Pool's atomics.
// Error answers are logged on the loop, once per burst (a write to the
// log), as the net/http plane does.
package epoll
