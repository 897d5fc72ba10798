// Package control is baton's control protocol: over a unix socket, one JSON
// request per line, one JSON response per line. A malformed, unknown or
// oversized request gets an error response; a client that sends nothing is
// timed out; neither disturbs anything else.
package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/batonproxy/baton/backends"
	"github.com/batonproxy/baton/cmd/internal/metrics"
	"github.com/batonproxy/baton/handoff"
	"github.com/batonproxy/baton/proxy"
)

// Limits of the protocol.
const (
	MaxLine            = 64 << 10
	DefaultReadTimeout = 10 * time.Second
)

// Commands.
const (
	CmdStatus  = "status"
	CmdUpgrade = "upgrade"
	CmdStop    = "stop"
	CmdRestart = "restart"
	CmdDrain   = "drain"
	CmdUndrain = "undrain"
	// CmdReopenLogs reopens the access log in every live generation
	// (after logrotate moved it).
	CmdReopenLogs = "reopen-logs"
)

// Request is one line sent to the control socket.
type Request struct {
	Cmd     string `json:"cmd"`
	Backend string `json:"backend,omitempty"` // restart, drain, undrain
	All     bool   `json:"all,omitempty"`     // restart every restartable backend
}

// Response is the one line answered to a Request.
type Response struct {
	OK       bool                     `json:"ok"`
	Error    string                   `json:"error,omitempty"`
	Status   *Status                  `json:"status,omitempty"`
	Upgrade  *handoff.UpgradeResult   `json:"upgrade,omitempty"`
	Restarts []backends.RestartResult `json:"restarts,omitempty"`
	Drain    *backends.DrainResult    `json:"drain,omitempty"`
	Backend  *backends.Status         `json:"backend,omitempty"`
}

// Errorf makes a failed Response.
func Errorf(format string, args ...any) Response {
	return Response{Error: fmt.Sprintf(format, args...)}
}

// Status is what `baton ctl status` shows.
type Status struct {
	PID              int               `json:"pid"`
	Generation       int               `json:"generation"`
	Version          string            `json:"version"`
	Started          time.Time         `json:"started"`
	UptimeSeconds    float64           `json:"uptime_s"`
	Config           string            `json:"config"`
	Listeners        []string          `json:"listeners"`
	Engine           string            `json:"engine"`          // data plane of the HTTP/1.1 listeners: epoll or stdlib
	Admin            string            `json:"admin,omitempty"` // the admin listener's address
	ControlSocket    string            `json:"control_socket"`
	Upgrading        bool              `json:"upgrading"`
	Draining         bool              `json:"draining"`
	Restarting       []string          `json:"restarting,omitempty"`
	LastUpgradeError string            `json:"last_upgrade_error,omitempty"`
	Connections      int               `json:"connections"`
	Proxy            proxy.Stats       `json:"proxy"`
	Backends         []backends.Status `json:"backends"`
	// Queued is how many of the held requests wait in the backends' queue
	// (in this process); they are counted in Proxy.Held too.
	Queued int64 `json:"queued"`
	// Generations are the live baton processes, oldest first: the serving
	// one and older ones still draining.
	Generations []metrics.Generation `json:"generations,omitempty"`
}

// Handler answers one request. It may block (upgrade, restart); ctx ends
// when the server stops.
type Handler func(ctx context.Context, req Request) Response

// Server serves the control protocol. Set Handler before Serve.
type Server struct {
	Handler     Handler
	ReadTimeout time.Duration // for each request line; default DefaultReadTimeout
	Logger      *slog.Logger  // nil discards

	mu       sync.Mutex
	ln       net.Listener
	conns    map[net.Conn]bool // true while a command runs
	wg       sync.WaitGroup
	stopping bool
}

// Serve accepts control connections on ln until StopAccepting, and then
// returns nil. A failed accept (out of file descriptors, say) is retried
// after a pause, as net/http does (handoff.KeepAccepting), so only a
// listener closed by someone else ends it early, with an error.
func (s *Server) Serve(ln net.Listener) error {
	ln = handoff.KeepAccepting(ln, s.Logger, "control socket")
	s.mu.Lock()
	s.ln = ln
	if s.conns == nil {
		s.conns = map[net.Conn]bool{}
	}
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			stopping := s.stopping
			s.mu.Unlock()
			if stopping {
				return nil
			}
			return fmt.Errorf("control: accept: %w", err)
		}
		s.mu.Lock()
		if s.stopping {
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.conns[c] = false
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

func (s *Server) readTimeout() time.Duration {
	if s.ReadTimeout > 0 {
		return s.ReadTimeout
	}
	return DefaultReadTimeout
}

func (s *Server) serveConn(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 0, 4096), MaxLine)
	for {
		_ = c.SetReadDeadline(time.Now().Add(s.readTimeout()))
		if !sc.Scan() {
			switch err := sc.Err(); {
			case err == nil:
				// EOF: the client is done.
			case errors.Is(err, bufio.ErrTooLong):
				s.write(c, Errorf("request line longer than %d bytes", MaxLine))
			case errors.Is(err, os.ErrDeadlineExceeded):
				s.write(c, Errorf("no request within %s", s.readTimeout()))
			}
			return
		}
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		var req Request
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			s.write(c, Errorf("malformed request: %v (want one JSON object per line, e.g. {\"cmd\":\"status\"})", err))
			continue
		}
		if !s.begin(c) {
			s.write(c, Errorf("baton is stopping"))
			return
		}
		_ = c.SetReadDeadline(time.Time{})
		resp := s.Handler(context.Background(), req)
		ok := s.write(c, resp)
		if !s.end(c) || !ok {
			return
		}
	}
}

func (s *Server) begin(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	s.conns[c] = true
	return true
}

// end marks c idle again and reports whether it may take another command:
// a stopping process answers what it started, then hangs up.
func (s *Server) end(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns[c] = false
	return !s.stopping
}

func (s *Server) write(c net.Conn, r Response) bool {
	b, err := json.Marshal(r)
	if err != nil {
		b, _ = json.Marshal(Errorf("encoding response: %v", err))
	}
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Write(append(b, '\n'))
	if err != nil && s.Logger != nil {
		s.Logger.Debug("control: write response", "err", err)
	}
	return err == nil
}

// StopAccepting closes the listener and ends connections that are waiting
// for a request; commands already running finish and answer.
func (s *Server) StopAccepting() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopping = true
	if s.ln != nil {
		_ = s.ln.Close()
	}
	for c, busy := range s.conns {
		if !busy {
			_ = c.SetReadDeadline(time.Now())
		}
	}
}

// Drain waits for running commands to answer; when ctx ends it closes
// their connections.
func (s *Server) Drain(ctx context.Context) error {
	s.StopAccepting()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	<-done
	return nil
}

// Do sends one request to the control socket at path and returns the
// response. It waits as long as ctx allows (an upgrade or a restart may
// take a while).
func Do(ctx context.Context, path string, req Request) (Response, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return Response{}, fmt.Errorf("control: connect to %s: %w (is baton running?)", path, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	b, _ := json.Marshal(req)
	if _, err := c.Write(append(b, '\n')); err != nil {
		return Response{}, fmt.Errorf("control: send: %w", err)
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	if !sc.Scan() {
		err := sc.Err()
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return Response{}, fmt.Errorf("control: no response: %w", err)
	}
	var resp Response
	if err := json.Unmarshal(sc.Bytes(), &resp); err != nil {
		return Response{}, fmt.Errorf("control: bad response: %w", err)
	}
	return resp, nil
}
