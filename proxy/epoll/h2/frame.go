package h2

import (
	"golang.org/x/net/http2"
)

// Frame coding is by hand over the connection's buffers: the 9-byte
// header is all there is to it, and x/net/http2's Framer allocates a
// frame per HEADERS, SETTINGS, PING... it reads and copies every frame it
// writes once more. Its types name what is coded.

const (
	frameHeaderLen = 9
	minFrameSize   = 1 << 14
	maxFrameSize   = 1<<24 - 1
	prefaceLen     = len(http2.ClientPreface)
)

// Frame types.
const (
	frameData         = http2.FrameData
	frameHeaders      = http2.FrameHeaders
	framePriority     = http2.FramePriority
	frameRSTStream    = http2.FrameRSTStream
	frameSettings     = http2.FrameSettings
	framePushPromise  = http2.FramePushPromise
	framePing         = http2.FramePing
	frameGoAway       = http2.FrameGoAway
	frameWindowUpdate = http2.FrameWindowUpdate
	frameContinuation = http2.FrameContinuation
)

// Flags.
const (
	flagEndStream  = byte(http2.FlagDataEndStream)
	flagAck        = byte(http2.FlagSettingsAck)
	flagEndHeaders = byte(http2.FlagHeadersEndHeaders)
	flagPadded     = byte(http2.FlagDataPadded)
	flagPriority   = byte(http2.FlagHeadersPriority)
)

// ErrCode is an HTTP/2 error code (RFC 9113 §7).
type ErrCode = http2.ErrCode

// Error codes used by the engine.
const (
	codeNo                 = http2.ErrCodeNo
	codeProtocol           = http2.ErrCodeProtocol
	codeInternal           = http2.ErrCodeInternal
	codeFlowControl        = http2.ErrCodeFlowControl
	codeSettingsTimeout    = http2.ErrCodeSettingsTimeout
	codeStreamClosed       = http2.ErrCodeStreamClosed
	codeFrameSize          = http2.ErrCodeFrameSize
	codeRefusedStream      = http2.ErrCodeRefusedStream
	codeCancel             = http2.ErrCodeCancel
	codeCompression        = http2.ErrCodeCompression
	codeEnhanceYourCalm    = http2.ErrCodeEnhanceYourCalm
	codeHTTP11Required     = http2.ErrCodeHTTP11Required
	codeInadequateSecurity = http2.ErrCodeInadequateSecurity
)

// frameHeader is a parsed frame header.
type frameHeader struct {
	length uint32
	typ    http2.FrameType
	flags  byte
	stream uint32
}

func parseFrameHeader(b []byte) frameHeader {
	return frameHeader{
		length: uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]),
		typ:    http2.FrameType(b[3]),
		flags:  b[4],
		stream: (uint32(b[5])<<24 | uint32(b[6])<<16 | uint32(b[7])<<8 | uint32(b[8])) & (1<<31 - 1),
	}
}

func u32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// appendFrameHeader appends a frame header.
func appendFrameHeader(b []byte, length int, typ http2.FrameType, flags byte, stream uint32) []byte {
	return append(b, byte(length>>16), byte(length>>8), byte(length), byte(typ), flags,
		byte(stream>>24), byte(stream>>16), byte(stream>>8), byte(stream))
}

func appendU32(b []byte, v uint32) []byte {
	return append(b, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

// Frame writers: each appends one whole frame to the output buffer.

func (c *Conn) writeSettingsAck() {
	if c.closed {
		return
	}
	c.out = appendFrameHeader(c.out, 0, frameSettings, flagAck, 0)
	c.control(frameHeaderLen)
}

func (c *Conn) writePing(ack bool, data []byte) {
	if c.closed {
		return
	}
	var f byte
	if ack {
		f = flagAck
	}
	c.out = appendFrameHeader(c.out, 8, framePing, f, 0)
	c.out = append(c.out, data[:8]...)
	c.control(frameHeaderLen + 8)
}

func (c *Conn) writeGoAway(last uint32, code ErrCode) {
	c.out = appendFrameHeader(c.out, 8, frameGoAway, 0, 0)
	c.out = appendU32(c.out, last)
	c.out = appendU32(c.out, uint32(code))
}

func (c *Conn) writeWindowUpdate(stream, incr uint32) {
	if c.closed {
		return
	}
	c.out = appendFrameHeader(c.out, 4, frameWindowUpdate, 0, stream)
	c.out = appendU32(c.out, incr)
	c.control(frameHeaderLen + 4)
}

func (c *Conn) writeRST(stream uint32, code ErrCode) {
	if c.closed {
		return
	}
	c.out = appendFrameHeader(c.out, 4, frameRSTStream, 0, stream)
	c.out = appendU32(c.out, uint32(code))
	c.control(frameHeaderLen + 4)
}

// writeServerPreface queues the server's SETTINGS and the connection
// window's increase beyond the protocol's 65,535.
func (c *Conn) writeServerPreface() {
	type setting struct {
		id http2.SettingID
		v  uint32
	}
	s := [...]setting{
		{http2.SettingMaxConcurrentStreams, c.cfg.MaxConcurrentStreams},
		{http2.SettingInitialWindowSize, c.cfg.StreamWindow},
		{http2.SettingMaxFrameSize, c.cfg.MaxFrameSize},
		{http2.SettingMaxHeaderListSize, c.cfg.MaxHeaderListSize},
		{http2.SettingHeaderTableSize, c.cfg.HeaderTableSize},
	}
	c.out = appendFrameHeader(c.out, len(s)*6, frameSettings, 0, 0)
	for _, x := range s {
		c.out = append(c.out, byte(x.id>>8), byte(x.id))
		c.out = appendU32(c.out, x.v)
	}
	if d := c.cfg.ConnWindow - initialWindow; d > 0 {
		c.writeWindowUpdate(0, d)
	}
}

// initialWindow is the protocol's initial flow-control window.
const initialWindow = 65535
