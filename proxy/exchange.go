package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Exchange describes one proxied request once it is over: what an access
// log writes and what metrics count. It is the seam between a data plane
// (the net/http Handler here, or an event-loop plane) and everything that
// observes requests: each plane fills it the same way and hands it to the
// Observer. An Observer must not keep the pointer past its call.
type Exchange struct {
	Start      time.Time
	RemoteAddr string // the client's ip:port
	Method     string
	URI        string // as the client sent it
	Proto      string // HTTP/1.1, HTTP/2.0
	Host       string
	Referer    string
	UserAgent  string
	TLS        bool

	Status   int    // as sent to the client; 0 if nothing was
	BytesIn  int64  // request body bytes read from the client
	BytesOut int64  // response body bytes written to the client
	Backend  string // the backend that answered, or the last one tried; "" if none
	Attempts int    // sends to backends (retries included)
	// DialRetries is how many of the Attempts-1 retries followed a
	// connection that could not be made; the rest followed a connection
	// that failed before a response.
	DialRetries int

	Held     time.Duration // waiting for a ready backend
	Upstream time.Duration // from sending to the backend to its response header (last attempt)
	Total    time.Duration // from the request's header to the end of its response

	Term Termination // how it ended
}

// Termination says how a request ended, in the spirit of HAProxy's
// termination flags.
type Termination uint8

// Terminations.
const (
	TermOK             Termination = iota // answered in full (whatever the status)
	TermClientAborted                     // the client went away before the response was complete
	TermClientError                       // the client sent something malformed (400)
	TermBackendRefused                    // no connection could be made to any backend (502)
	TermBackendError                      // the backend's response was malformed or broke (502, or cut short)
	TermBackendTimeout                    // the backend did not answer in time (504)
	TermHoldTimeout                       // no backend was ready within hold_timeout (503/502)
	TermTooManyHeld                       // max_held requests were waiting already (503)
	TermNotRetried                        // failed after the backend may have acted, not replayable (502)
	TermUpgraded                          // switched protocols (WebSocket); the tunnel has ended
)

var termNames = [...]string{
	TermOK:             "ok",
	TermClientAborted:  "client_aborted",
	TermClientError:    "client_error",
	TermBackendRefused: "backend_refused",
	TermBackendError:   "backend_error",
	TermBackendTimeout: "backend_timeout",
	TermHoldTimeout:    "hold_timeout",
	TermTooManyHeld:    "max_held",
	TermNotRetried:     "not_retried",
	TermUpgraded:       "upgraded",
}

func (t Termination) String() string {
	if int(t) < len(termNames) {
		return termNames[t]
	}
	return fmt.Sprintf("termination(%d)", t)
}

// Observer receives every finished Exchange. Observe is called on the
// request's goroutine (or event loop) and must not block: hand slow work
// (disk writes) to a goroutine of its own.
type Observer interface {
	Observe(e *Exchange)
}

// Failure is how a data plane answers a request it could not proxy: the
// status, the one-line reason and how it ended. Both planes derive it from
// the same errors with ClassifyError, so they answer alike.
type Failure struct {
	Status     int
	Message    string
	Term       Termination
	RetryAfter bool   // send Retry-After: 1
	Close      bool   // close the client connection after the answer
	key        string // what bursts of the same error are counted by
}

// ClassifyError maps an error from a proxied round trip to the answer the
// client gets. ctx is the request's context; maxHeld is the Handler's
// MaxHeld (for the message).
func ClassifyError(ctx context.Context, err error, maxHeld int) Failure {
	return classify(ctx.Err() != nil, err, maxHeld)
}

// classify is ClassifyError; aborted says the client went away.
func classify(aborted bool, err error, maxHeld int) Failure {
	var (
		he *holdError
		ue *upstreamError
	)
	f := Failure{Status: http.StatusBadGateway, Message: err.Error(), Term: TermBackendError, key: "error"}
	switch {
	case aborted:
		f.Term = TermClientAborted
	case errors.As(err, new(*clientError)):
		f.Status, f.Term, f.key, f.Close = http.StatusBadRequest, TermClientError, "client", true
	case errors.Is(err, errTooManyHeld):
		f.Status, f.Term, f.key, f.RetryAfter = http.StatusServiceUnavailable, TermTooManyHeld, "max_held", true
		f.Message = fmt.Sprintf("too many requests waiting for a backend (max_held %d)", maxHeld)
	case errors.As(err, &he):
		f.Term = TermHoldTimeout
		if he.last != nil {
			f.key = "hold/" + he.lastUp
		} else {
			f.Status, f.key, f.RetryAfter = http.StatusServiceUnavailable, "hold", true
		}
	case errors.As(err, &ue) && isTimeout(ue.err):
		f.Status, f.Term, f.key = http.StatusGatewayTimeout, TermBackendTimeout, "timeout/"+ue.up
	case errors.As(err, &ue):
		f.key = "upstream/" + ue.up
		switch {
		case ue.notRetried != "":
			f.Term = TermNotRetried
		case isDialError(ue.err):
			f.Term = TermBackendRefused
		}
	}
	return f
}
