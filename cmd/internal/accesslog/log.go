package accesslog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/batonproxy/baton/proxy"
)

// Defaults applied by Open to zero Options fields.
const (
	DefaultBuffer        = 1 << 20 // bytes of lines waiting for the disk
	DefaultPollInterval  = 250 * time.Millisecond
	DefaultFlushInterval = 10 * time.Millisecond
)

// pipeBuf is how much one write(2) to a pipe may carry and stay atomic
// (PIPE_BUF on Linux).
const pipeBuf = 4096

// Options configure a Log. Path is required.
type Options struct {
	// Path is the file lines are appended to (created mode 0644), or "-"
	// for standard output.
	Path   string
	Format Format
	// Buffer bounds the bytes of lines waiting to be written; a line that
	// does not fit is dropped. Default DefaultBuffer.
	Buffer int
	// ReopenEpoch, if set, is polled every PollInterval; when its value
	// changes the file is reopened (`ctl reopen-logs` in another
	// generation).
	ReopenEpoch  func() uint64
	PollInterval time.Duration // default DefaultPollInterval
	// FlushInterval is how long the first line of a batch waits for more
	// before the batch is written (sooner once half the buffer is used),
	// as nginx's access_log flush=: a write(2) per batch, not per
	// request. Default DefaultFlushInterval.
	FlushInterval time.Duration
	// Written and Dropped, if set, are told how many lines were written
	// and dropped (buffer full, write error). They are called from the
	// writer goroutine and from Log.
	Written func(n int)
	Dropped func(n int)
}

// Log is an open access log. Its methods are safe for concurrent use;
// Close it to write what is pending and stop its goroutine.
type Log struct {
	opts Options

	mu      sync.Mutex
	pending []byte
	lines   int
	closed  bool

	// Owned by the writer goroutine.
	f     *os.File
	pipe  bool
	spare []byte
	epoch uint64

	wakeC   chan struct{}
	reopenC chan chan error
	stopC   chan struct{}
	doneC   chan struct{}
}

// Open opens the log and starts its writer.
func Open(opts Options) (*Log, error) {
	if opts.Path == "" {
		return nil, errors.New("accesslog: no path")
	}
	if opts.Buffer <= 0 {
		opts.Buffer = DefaultBuffer
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = DefaultFlushInterval
	}
	f, pipe, err := open(opts.Path)
	if err != nil {
		return nil, err
	}
	l := &Log{
		opts: opts, f: f, pipe: pipe,
		pending: make([]byte, 0, opts.Buffer), spare: make([]byte, 0, opts.Buffer),
		wakeC: make(chan struct{}, 1), reopenC: make(chan chan error),
		stopC: make(chan struct{}), doneC: make(chan struct{}),
	}
	if opts.ReopenEpoch != nil {
		l.epoch = opts.ReopenEpoch()
	}
	go l.run()
	return l, nil
}

func open(path string) (f *os.File, pipe bool, err error) {
	if path == "-" {
		f = os.Stdout
	} else {
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, false, fmt.Errorf("accesslog: %w", err)
		}
	}
	fi, err := f.Stat()
	pipe = err != nil || !fi.Mode().IsRegular()
	return f, pipe, nil
}

// Check reports whether path can be opened for appending, as Open would,
// without leaving a file behind that was not there.
func Check(path string) error {
	if path == "-" {
		return nil
	}
	_, statErr := os.Stat(path)
	f, _, err := open(path)
	if err != nil {
		return err
	}
	f.Close()
	if errors.Is(statErr, os.ErrNotExist) {
		_ = os.Remove(path)
	}
	return nil
}

var scratch = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// Log formats e's line and queues it. It never blocks on the disk: when
// the buffer is full the line is dropped and counted.
func (l *Log) Log(e *proxy.Exchange, x Extra) {
	bp := scratch.Get().(*[]byte)
	line := AppendLine((*bp)[:0], l.opts.Format, e, x)
	l.mu.Lock()
	ok := !l.closed && len(l.pending)+len(line) <= cap(l.pending)
	// The writer is woken by a batch's first line (it then waits for
	// FlushInterval) and when half the buffer is used (it writes now).
	wake := false
	if ok {
		half := cap(l.pending) / 2
		wake = len(l.pending) == 0 || len(l.pending) < half && len(l.pending)+len(line) >= half
		l.pending = append(l.pending, line...)
		l.lines++
	}
	l.mu.Unlock()
	if cap(line) <= 64<<10 {
		*bp = line[:0]
		scratch.Put(bp)
	}
	if !ok {
		if l.opts.Dropped != nil {
			l.opts.Dropped(1)
		}
		return
	}
	if wake {
		select {
		case l.wakeC <- struct{}{}:
		default:
		}
	}
}

// Reopen opens the file again (after logrotate moved it) and waits until
// lines go to the new one. If the new file cannot be opened, lines keep
// going to the old one and the error is returned.
func (l *Log) Reopen() error {
	c := make(chan error, 1)
	select {
	case l.reopenC <- c:
		return <-c
	case <-l.doneC:
		return errors.New("accesslog: closed")
	}
}

// Close writes what is pending, closes the file and stops the writer.
func (l *Log) Close() error {
	l.mu.Lock()
	already := l.closed
	l.closed = true
	l.mu.Unlock()
	if !already {
		close(l.stopC)
	}
	<-l.doneC
	return nil
}

func (l *Log) run() {
	defer close(l.doneC)
	var tickC <-chan time.Time
	if l.opts.ReopenEpoch != nil {
		t := time.NewTicker(l.opts.PollInterval)
		defer t.Stop()
		tickC = t.C
	}
	flush := time.NewTimer(time.Hour)
	flush.Stop()
	defer flush.Stop()
	waiting := false // flush is set for a batch
	for {
		select {
		case <-l.wakeC:
			l.mu.Lock()
			full := len(l.pending) >= cap(l.pending)/2
			l.mu.Unlock()
			if !full {
				if !waiting {
					waiting = true
					flush.Reset(l.opts.FlushInterval)
				}
				continue
			}
		case <-flush.C:
		case <-tickC:
			if e := l.opts.ReopenEpoch(); e != l.epoch {
				l.epoch = e
				l.flush()
				_ = l.reopen()
			}
		case c := <-l.reopenC:
			l.flush()
			if l.opts.ReopenEpoch != nil {
				l.epoch = l.opts.ReopenEpoch()
			}
			c <- l.reopen()
			continue
		case <-l.stopC:
			l.flush()
			if l.f != os.Stdout {
				l.f.Close()
			}
			return
		}
		if waiting {
			waiting = false
			flush.Stop()
		}
		l.flush()
	}
}

func (l *Log) reopen() error {
	if l.opts.Path == "-" {
		return nil
	}
	f, pipe, err := open(l.opts.Path)
	if err != nil {
		return err
	}
	l.f.Close()
	l.f, l.pipe = f, pipe
	return nil
}

// flush writes the pending lines: one write(2) for a file, chunks of
// whole lines up to PIPE_BUF for a pipe.
func (l *Log) flush() {
	l.mu.Lock()
	b, n := l.pending, l.lines
	l.pending, l.lines = l.spare[:0], 0
	l.mu.Unlock()
	l.spare = b
	if n == 0 {
		return
	}
	written, err := l.write(b)
	if err != nil {
		dropped := bytes.Count(b[written:], []byte{'\n'})
		if written > 0 && b[written-1] != '\n' {
			// A line cut by a full disk: end it, so the next one starts
			// a line of its own.
			_, _ = l.f.Write([]byte{'\n'})
		}
		n -= dropped
		if l.opts.Dropped != nil && dropped > 0 {
			l.opts.Dropped(dropped)
		}
	}
	if l.opts.Written != nil && n > 0 {
		l.opts.Written(n)
	}
}

func (l *Log) write(b []byte) (int, error) {
	if !l.pipe {
		return l.f.Write(b)
	}
	done := 0
	for done < len(b) {
		end := min(done+pipeBuf, len(b))
		if end < len(b) {
			if i := bytes.LastIndexByte(b[done:end], '\n'); i >= 0 {
				end = done + i + 1
			} else if j := bytes.IndexByte(b[end:], '\n'); j >= 0 {
				end = end + j + 1 // one line longer than PIPE_BUF
			} else {
				end = len(b)
			}
		}
		n, err := l.f.Write(b[done:end])
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}
