package backends

import (
	"net/netip"
	"testing"
)

func TestAppendProxyHeader(t *testing.T) {
	v4src, v4dst := netip.MustParseAddrPort("192.0.2.7:51234"), netip.MustParseAddrPort("127.0.0.1:8080")
	v6src, v6dst := netip.MustParseAddrPort("[2001:db8::7]:51234"), netip.MustParseAddrPort("[::1]:8080")
	mapped := netip.MustParseAddrPort("[::ffff:192.0.2.7]:51234")
	sig := "\r\n\r\n\x00\r\nQUIT\n"
	tests := []struct {
		name     string
		v        string
		src, dst netip.AddrPort
		want     string
	}{
		{"v1 tcp4", ProxyProtocolV1, v4src, v4dst, "PROXY TCP4 192.0.2.7 127.0.0.1 51234 8080\r\n"},
		{"v1 tcp6", ProxyProtocolV1, v6src, v6dst, "PROXY TCP6 2001:db8::7 ::1 51234 8080\r\n"},
		{"v1 mapped", ProxyProtocolV1, mapped, v4dst, "PROXY TCP4 192.0.2.7 127.0.0.1 51234 8080\r\n"},
		{"v1 unknown", ProxyProtocolV1, netip.AddrPort{}, v4dst, "PROXY UNKNOWN\r\n"},
		{"v1 mixed families", ProxyProtocolV1, v6src, v4dst, "PROXY UNKNOWN\r\n"},
		{"v2 tcp4", ProxyProtocolV2, v4src, v4dst, sig + "\x21\x11\x00\x0c" + "\xc0\x00\x02\x07" + "\x7f\x00\x00\x01" + "\xc8\x22" + "\x1f\x90"},
		{"v2 tcp6", ProxyProtocolV2, v6src, v6dst, sig + "\x21\x21\x00\x24" +
			"\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x07" +
			"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01" + "\xc8\x22\x1f\x90"},
		{"v2 local", ProxyProtocolV2, netip.AddrPort{}, netip.AddrPort{}, sig + "\x20\x00\x00\x00"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if g, e := string(appendProxyHeader(nil, tc.v, tc.src, tc.dst)), tc.want; g != e {
				t.Errorf("got %q, want %q", g, e)
			}
		})
	}
}
