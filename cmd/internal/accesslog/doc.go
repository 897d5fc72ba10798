// Package accesslog writes one line per proxied request, in NCSA Combined
// (what GoAccess, AWStats and fail2ban read), Combined with baton's fields
// appended, or JSON, to a file or stdout, without ever making a request
// wait for the disk.
//
// A request's line is formatted on the request's goroutine into a pooled
// buffer and appended to a bounded in-memory batch; one goroutine per Log
// writes whole batches. When the batch is full (a slow or stuck disk) the
// line is dropped and counted, never the request. Several baton
// generations append to the same file: it is opened O_APPEND and each
// write(2) carries whole lines only (for a pipe, at most PIPE_BUF bytes),
// so lines of different processes never interleave.
package accesslog
