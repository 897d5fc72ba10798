package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestUniqueKeys: whatever a call site passes, every JSON line has each
// key once, and nothing is lost.
func TestUniqueKeys(t *testing.T) {
	for _, tc := range []struct {
		name string
		log  func(l *slog.Logger)
		want string // the line after "level":"INFO",
	}{
		{"no clash", func(l *slog.Logger) { l.Info("m", "a", 1) },
			`"msg":"m","pid":7,"a":1}`},
		{"with key again", func(l *slog.Logger) { l.Info("m", "pid", 8) },
			`"msg":"m","pid":7,"pid_2":8}`},
		{"builtin", func(l *slog.Logger) { l.Info("m", "msg", "x", "level", 1) },
			`"msg":"m","pid":7,"msg_2":"x","level_2":1}`},
		{"twice in a record", func(l *slog.Logger) { l.Info("m", "a", 1, "a", 2, "a_2", 3) },
			`"msg":"m","pid":7,"a":1,"a_2":2,"a_2_2":3}`},
		{"With twice", func(l *slog.Logger) { l.With("pid", 9).Info("m") },
			`"msg":"m","pid":7,"pid_2":9}`},
		{"group", func(l *slog.Logger) { l.Info("m", slog.Group("g", "a", 1, "a", 2), "g", 3) },
			`"msg":"m","pid":7,"g":{"a":1,"a_2":2},"g_2":3}`},
		{"inline group", func(l *slog.Logger) { l.Info("m", slog.Group("", "pid", 1)) },
			`"msg":"m","pid":7,"pid_2":1}`},
		{"WithGroup is a new scope", func(l *slog.Logger) { l.WithGroup("g").Info("m", "pid", 1, "pid", 2) },
			`"msg":"m","pid":7,"g":{"pid":1,"pid_2":2}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			h := slog.NewJSONHandler(&buf, &slog.HandlerOptions{ReplaceAttr: func(g []string, a slog.Attr) slog.Attr {
				if len(g) == 0 && a.Key == slog.TimeKey {
					return slog.Attr{}
				}
				return a
			}})
			l := slog.New(newUniqueKeys(h)).With("pid", 7)
			tc.log(l)
			got := strings.TrimPrefix(strings.TrimSpace(buf.String()), `{"level":"INFO",`)
			if got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
			if _, err := jsonKeys(buf.Bytes()); err != nil {
				t.Error(err)
			}
		})
	}
}
