package backends

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/batonproxy/baton/proxy"
)

// PROXY protocol versions a backend may be sent (Config.ProxyProtocol).
const (
	ProxyProtocolV1 = "v1" // text: "PROXY TCP4 src dst sport dport\r\n"
	ProxyProtocolV2 = "v2" // binary
)

// A connection that begins with a PROXY header belongs to one client, so
// a backend with the PROXY protocol gets a new connection per request
// (never a pooled one that another client's request could reuse); the
// header names the client and the address it connected to. Connections
// baton makes on its own behalf (health checks, the restart sentinel)
// name the connection's own addresses.

type clientAddrKey struct{}

// ppTransport passes the client's address to the dialer of a PROXY
// protocol backend's per-request connections.
type ppTransport struct{ rt http.RoundTripper }

func (t ppTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := context.WithValue(req.Context(), clientAddrKey{}, req.RemoteAddr)
	return t.rt.RoundTrip(req.WithContext(ctx))
}

var _ proxy.ProxiedUpstream = (*Backend)(nil)

// ProxyHeader appends to dst the PROXY protocol header naming client and
// local that a connection for a client's request begins with, or returns
// dst when the backend is not sent the PROXY protocol; a data plane that
// makes its own connections calls it (proxy.ProxiedUpstream).
func (b *Backend) ProxyHeader(dst []byte, client, local netip.AddrPort) []byte {
	if b.cfg.ProxyProtocol == "" {
		return dst
	}
	return appendProxyHeader(dst, b.cfg.ProxyProtocol, client, local)
}

// ppDialer wraps dial so that every connection starts with a PROXY header
// of version v.
func ppDialer(v string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		var src, dst netip.AddrPort
		if s, ok := ctx.Value(clientAddrKey{}).(string); ok {
			src, _ = netip.ParseAddrPort(s)
			if a, ok := ctx.Value(http.LocalAddrContextKey).(net.Addr); ok {
				dst, _ = netip.ParseAddrPort(a.String())
			}
		} else {
			// baton's own connection: its own addresses. (Apache 2.4's
			// mod_remoteip fails "PROXY UNKNOWN" followed by data with
			// "internal error: have data left over", AH03513.)
			src, _ = netip.ParseAddrPort(c.LocalAddr().String())
			dst, _ = netip.ParseAddrPort(c.RemoteAddr().String())
		}
		if dl, ok := ctx.Deadline(); ok {
			_ = c.SetWriteDeadline(dl)
		}
		_, err = c.Write(appendProxyHeader(nil, v, src, dst))
		_ = c.SetWriteDeadline(time.Time{})
		if err != nil {
			c.Close()
			// A dial error: nothing of the request was sent.
			return nil, &net.OpError{Op: "dial", Net: network, Err: fmt.Errorf("proxy protocol header: %w", err)}
		}
		return c, nil
	}
}

// appendProxyHeader appends a PROXY protocol header of version v naming
// src and dst; if either is not valid, or their families differ, the
// header says LOCAL (v2) or UNKNOWN (v1).
func appendProxyHeader(b []byte, v string, src, dst netip.AddrPort) []byte {
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	known := src.IsValid() && dst.IsValid() && src.Addr().Is4() == dst.Addr().Is4()
	if v == ProxyProtocolV1 {
		if !known {
			return append(b, "PROXY UNKNOWN\r\n"...)
		}
		fam := "TCP4 "
		if !src.Addr().Is4() {
			fam = "TCP6 "
		}
		b = append(b, "PROXY "...)
		b = append(b, fam...)
		b = src.Addr().AppendTo(b)
		b = append(b, ' ')
		b = dst.Addr().AppendTo(b)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(src.Port()), 10)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(dst.Port()), 10)
		return append(b, "\r\n"...)
	}
	b = append(b, "\r\n\r\n\x00\r\nQUIT\n"...)
	if !known {
		return append(b, 0x20, 0x00, 0, 0) // v2, LOCAL; UNSPEC, no addresses
	}
	if src.Addr().Is4() {
		b = append(b, 0x21, 0x11, 0, 12) // v2, PROXY; TCP over IPv4, 12 bytes
	} else {
		b = append(b, 0x21, 0x21, 0, 36) // TCP over IPv6, 36 bytes
	}
	b = append(b, src.Addr().AsSlice()...)
	b = append(b, dst.Addr().AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}
