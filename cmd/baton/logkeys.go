package main

import (
	"context"
	"log/slog"
	"strconv"
)

// uniqueKeys is a slog.Handler that keeps the keys of every log line
// unique: an attribute whose key the line has already (time, level, msg,
// an attribute given to the logger's With such as pid, or an earlier one
// of the same record) is passed on as key_2 (key_3, ...). Issue 16: JSON
// lines carried two "pid" keys, which some parsers reject and others
// resolve by dropping one. Call sites should name their keys so that this
// never happens (new_pid, dead_pid); this is the backstop.
type uniqueKeys struct {
	h    slog.Handler
	keys map[string]bool // of the innermost group opened by WithGroup; never written after creation
}

// builtinKeys are the keys slog's handlers write at the top level.
var builtinKeys = map[string]bool{slog.TimeKey: true, slog.LevelKey: true, slog.MessageKey: true, slog.SourceKey: true}

func newUniqueKeys(h slog.Handler) uniqueKeys {
	return uniqueKeys{h: h, keys: builtinKeys}
}

func (u uniqueKeys) Enabled(ctx context.Context, l slog.Level) bool { return u.h.Enabled(ctx, l) }

func (u uniqueKeys) Handle(ctx context.Context, r slog.Record) error {
	clash := false
	seen := map[string]bool{}
	r.Attrs(func(a slog.Attr) bool {
		if hasClash(a, u.keys, seen) {
			clash = true
			return false
		}
		return true
	})
	if !clash {
		return u.h.Handle(ctx, r)
	}
	attrs := make([]slog.Attr, 0, r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool {
		attrs = append(attrs, a)
		return true
	})
	nr := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	nr.AddAttrs(dedupe(attrs, copyKeys(u.keys))...)
	return u.h.Handle(ctx, nr)
}

func (u uniqueKeys) WithAttrs(as []slog.Attr) slog.Handler {
	keys := copyKeys(u.keys)
	as = dedupe(as, keys)
	return uniqueKeys{h: u.h.WithAttrs(as), keys: keys}
}

func (u uniqueKeys) WithGroup(name string) slog.Handler {
	if name == "" {
		return u
	}
	return uniqueKeys{h: u.h.WithGroup(name), keys: map[string]bool{}}
}

func copyKeys(m map[string]bool) map[string]bool {
	out := make(map[string]bool, len(m)+8)
	for k := range m {
		out[k] = true
	}
	return out
}

// hasClash reports whether a repeats a key of outer or of the attributes
// seen so far (which it adds to seen), or has a group with a repeated key.
func hasClash(a slog.Attr, outer, seen map[string]bool) bool {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		if a.Key == "" { // inlined by the handlers
			for _, m := range v.Group() {
				if hasClash(m, outer, seen) {
					return true
				}
			}
			return false
		}
		inner := map[string]bool{}
		for _, m := range v.Group() {
			if hasClash(m, nil, inner) {
				return true
			}
		}
	}
	if a.Key == "" {
		return false
	}
	if outer[a.Key] || seen[a.Key] {
		return true
	}
	seen[a.Key] = true
	return false
}

// dedupe renames the attributes of as whose key is in keys, adding each
// key it passes to keys; groups get unique keys of their own. Inlined
// groups (empty key) are flattened.
func dedupe(as []slog.Attr, keys map[string]bool) []slog.Attr {
	out := make([]slog.Attr, 0, len(as))
	for _, a := range as {
		a.Value = a.Value.Resolve()
		if a.Value.Kind() == slog.KindGroup {
			if a.Key == "" {
				out = append(out, dedupe(a.Value.Group(), keys)...)
				continue
			}
			a.Value = slog.GroupValue(dedupe(a.Value.Group(), map[string]bool{})...)
		}
		if a.Key == "" {
			out = append(out, a)
			continue
		}
		k := a.Key
		for n := 2; keys[k]; n++ {
			k = a.Key + "_" + strconv.Itoa(n)
		}
		keys[k] = true
		a.Key = k
		out = append(out, a)
	}
	return out
}
