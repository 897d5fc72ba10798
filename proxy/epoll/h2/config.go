package h2

import (
	"errors"
	"fmt"
	"time"
)

// Defaults applied by NewConn to zero Config fields.
const (
	// DefaultMaxConcurrentStreams is SETTINGS_MAX_CONCURRENT_STREAMS
	// (config h2_max_concurrent_streams).
	DefaultMaxConcurrentStreams = 100
	// DefaultStreamWindow is the SETTINGS_INITIAL_WINDOW_SIZE advertised:
	// the request body bytes one stream may have in the engine (config
	// h2_initial_window).
	DefaultStreamWindow = 64 << 10
	// DefaultConnWindow is the connection's receive window: the request
	// body bytes all its streams may have in the engine together.
	DefaultConnWindow = 1 << 20
	// DefaultMaxFrameSize is the SETTINGS_MAX_FRAME_SIZE advertised (the
	// protocol's minimum).
	DefaultMaxFrameSize = 16 << 10
	// DefaultMaxHeaderListSize bounds a decoded request header list, in
	// HPACK's measure (32 bytes per field on top of name and value): what
	// x/net/http2 derives from net/http's 64 KiB MaxHeaderBytes, so both
	// planes answer the same requests with 431.
	DefaultMaxHeaderListSize = 64<<10 + 10*32
	// DefaultHeaderTableSize is SETTINGS_HEADER_TABLE_SIZE: the request
	// decoder's dynamic table.
	DefaultHeaderTableSize = 4096
	// DefaultMaxOutput bounds the response DATA the engine holds before
	// the loop flushes it.
	DefaultMaxOutput = 64 << 10
	// DefaultIdleTimeout ends a connection without streams.
	DefaultIdleTimeout = 60 * time.Second
	// DefaultReadHeaderTimeout bounds the client preface and each header
	// block that has begun.
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultWriteTimeout ends a stream whose response could not move for
	// that long (the client's window stayed shut, or it did not read).
	DefaultWriteTimeout = 60 * time.Second
	// DefaultDrainTimeout is how long the final GOAWAY of a drain waits
	// for the answer to its PING.
	DefaultDrainTimeout = time.Second
	// DefaultMaxGlitches bounds the frames a connection may send that
	// make the server work for nothing (see Config.MaxGlitches).
	DefaultMaxGlitches = 1000
	// DefaultMaxResets bounds the client's resets of requests the loop
	// was already serving, beyond the requests it let finish.
	DefaultMaxResets = 200
)

// Config tunes a Conn. The zero value is usable: every zero field takes
// its default.
type Config struct {
	MaxConcurrentStreams uint32 // streams open at once; more are refused (REFUSED_STREAM)
	StreamWindow         uint32 // request body bytes held per stream (SETTINGS_INITIAL_WINDOW_SIZE)
	ConnWindow           uint32 // request body bytes held per connection, at least StreamWindow
	MaxFrameSize         uint32 // largest frame accepted (SETTINGS_MAX_FRAME_SIZE), 16 KiB to 16 MiB-1
	MaxHeaderListSize    uint32 // decoded request header list bound (SETTINGS_MAX_HEADER_LIST_SIZE); larger gets 431
	HeaderTableSize      uint32 // HPACK decoder table (SETTINGS_HEADER_TABLE_SIZE), at most 64 KiB
	MaxOutput            int    // response DATA held unflushed before writers wait

	IdleTimeout       time.Duration // no stream for this long: GOAWAY and close
	ReadHeaderTimeout time.Duration // preface, or a header block begun and not finished
	WriteTimeout      time.Duration // a response that cannot move for this long is reset
	DrainTimeout      time.Duration // the final GOAWAY's wait for the PING answer

	// MaxGlitches bounds what a client may send that costs work and
	// serves nothing (PING, SETTINGS, PRIORITY, empty DATA, zero-length
	// CONTINUATION, frames on closed streams, refused streams); each
	// request that completes earns one back. Beyond it: GOAWAY
	// ENHANCE_YOUR_CALM.
	MaxGlitches int
	// MaxResets bounds the streams a client resets after the engine
	// handed their request to the loop (rapid reset, CVE-2023-44487),
	// beyond the requests it let finish. Beyond it: GOAWAY
	// ENHANCE_YOUR_CALM.
	MaxResets int

	// Clock returns monotonic nanoseconds; nil: time since the package
	// was loaded. The loop passes its own clock so that deadlines are in
	// its units.
	Clock func() int64
}

var epoch = time.Now()

func defaultClock() int64 { return int64(time.Since(epoch)) }

const maxWindow = 1<<31 - 1

// errConfig prefixes every configuration error.
var errConfig = errors.New("h2: config")

// normalize applies defaults and validates.
func (cfg Config) normalize() (Config, error) {
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if cfg.StreamWindow == 0 {
		cfg.StreamWindow = DefaultStreamWindow
	}
	if cfg.ConnWindow == 0 {
		cfg.ConnWindow = max(DefaultConnWindow, cfg.StreamWindow)
	}
	if cfg.MaxFrameSize == 0 {
		cfg.MaxFrameSize = DefaultMaxFrameSize
	}
	if cfg.MaxHeaderListSize == 0 {
		cfg.MaxHeaderListSize = DefaultMaxHeaderListSize
	}
	if cfg.HeaderTableSize == 0 {
		cfg.HeaderTableSize = DefaultHeaderTableSize
	}
	if cfg.MaxOutput == 0 {
		cfg.MaxOutput = DefaultMaxOutput
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.ReadHeaderTimeout == 0 {
		cfg.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.MaxGlitches == 0 {
		cfg.MaxGlitches = DefaultMaxGlitches
	}
	if cfg.MaxResets == 0 {
		cfg.MaxResets = DefaultMaxResets
	}
	if cfg.Clock == nil {
		cfg.Clock = defaultClock
	}
	switch {
	case cfg.MaxConcurrentStreams > 1<<20:
		return cfg, fmt.Errorf("%w: max concurrent streams %d over %d", errConfig, cfg.MaxConcurrentStreams, 1<<20)
	case cfg.StreamWindow > maxWindow:
		return cfg, fmt.Errorf("%w: stream window %d over %d", errConfig, cfg.StreamWindow, maxWindow)
	case cfg.ConnWindow > maxWindow || cfg.ConnWindow < cfg.StreamWindow:
		return cfg, fmt.Errorf("%w: connection window %d not between the stream window %d and %d", errConfig, cfg.ConnWindow, cfg.StreamWindow, maxWindow)
	case cfg.MaxFrameSize < minFrameSize || cfg.MaxFrameSize > maxFrameSize:
		return cfg, fmt.Errorf("%w: max frame size %d not between %d and %d", errConfig, cfg.MaxFrameSize, minFrameSize, maxFrameSize)
	case cfg.HeaderTableSize > 64<<10:
		return cfg, fmt.Errorf("%w: header table size %d over %d", errConfig, cfg.HeaderTableSize, 64<<10)
	case cfg.MaxHeaderListSize > 16<<20:
		return cfg, fmt.Errorf("%w: max header list size %d over %d", errConfig, cfg.MaxHeaderListSize, 16<<20)
	case cfg.MaxOutput < 0 || cfg.MaxGlitches < 0 || cfg.MaxResets < 0:
		return cfg, fmt.Errorf("%w: negative bound", errConfig)
	case cfg.IdleTimeout < 0 || cfg.ReadHeaderTimeout < 0 || cfg.WriteTimeout < 0 || cfg.DrainTimeout < 0:
		return cfg, fmt.Errorf("%w: negative timeout", errConfig)
	}
	return cfg, nil
}

// Validate reports whether cfg is usable, with defaults applied to its
// zero fields, so a configuration can be checked once (baton check)
// before any connection.
func (cfg Config) Validate() error {
	_, err := cfg.normalize()
	return err
}
