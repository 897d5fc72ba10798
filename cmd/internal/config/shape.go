package config

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// durationText is a duration as written in the file ("30s"); the type
// tells the shape check to say so when a bare number is given.
type durationText string

var durationType = reflect.TypeOf(durationText(""))

// A problem is a key the decoding structs do not have, or a value of the
// wrong type, found by checkShape.
type problem struct {
	key     string // with indices: backend[1].health_path
	bare    string // without indices, as toml.Key.String() has it: backend.health_path
	unknown bool
	reason  string
}

// checkShape compares the document, decoded without a schema, with the
// structs Parse decodes it into (file and the types of its fields, by
// their toml tags). It finds every unknown key, with the index of its
// [[backend]] or [[tls]] entry and the nearest known key, and every value
// of the wrong type, in words an operator reads ("want a duration in
// quotes, e.g. \"30s\""). order is the document's keys in the order they
// appear (toml.MetaData.Keys); the problems come in that order.
func checkShape(doc map[string]any, order []toml.Key) []problem {
	var out []problem
	walkTable(&out, "", "", "the top level", doc, reflect.TypeOf(file{}))
	rank := map[string]int{}
	for i, k := range order {
		if _, ok := rank[k.String()]; !ok {
			rank[k.String()] = i
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		ri, rj := rankOf(rank, out[i].bare), rankOf(rank, out[j].bare)
		if ri != rj {
			return ri < rj
		}
		return out[i].key < out[j].key
	})
	return out
}

func rankOf(rank map[string]int, bare string) int {
	if r, ok := rank[bare]; ok {
		return r
	}
	return len(rank)
}

// fields maps the toml names of struct type t to their types, in field order.
func fields(t reflect.Type) (names []string, types map[string]reflect.Type) {
	types = map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" || name == "-" {
			continue
		}
		names = append(names, name)
		types[name] = f.Type
	}
	return names, types
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

// walkTable checks table m, at path (bare without indices), against
// struct type t; label names the table in messages ("[[backend]]").
func walkTable(out *[]problem, path, bare, label string, m map[string]any, t reflect.Type) {
	names, types := fields(t)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := m[k]
		kp, kb := join(path, k), join(bare, k)
		ft, ok := types[k]
		if !ok {
			*out = append(*out, problem{key: kp, bare: kb, unknown: true, reason: unknownReason(label, k, v, names, types)})
			continue
		}
		walkValue(out, kp, kb, label, v, ft)
	}
}

// walkValue checks value v at path against type t; label names the
// table it is in.
func walkValue(out *[]problem, path, bare, label string, v any, t reflect.Type) {
	bad := func(format string, args ...any) {
		*out = append(*out, problem{key: path, bare: bare, reason: fmt.Sprintf(format, args...)})
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == durationType:
		switch x := v.(type) {
		case string:
		case int64, float64:
			bad("%v has no unit: want a duration in quotes, e.g. \"%vs\" or \"%vms\"", x, x, x)
		default:
			bad("want a duration in quotes, e.g. \"30s\", not %s", describe(v))
		}
	case t.Kind() == reflect.String:
		if _, ok := v.(string); !ok {
			bad("want a string in quotes, not %s", describe(v))
		}
	case t.Kind() == reflect.Int:
		switch x := v.(type) {
		case int64:
		case string:
			if _, err := strconv.Atoi(strings.TrimSpace(x)); err == nil {
				bad("want a number without quotes (%s = %s), not the string %q", lastKey(bare), strings.TrimSpace(x), x)
			} else {
				bad("want a whole number, not the string %q", x)
			}
		default:
			bad("want a whole number, not %s", describe(v))
		}
	case t.Kind() == reflect.Bool:
		switch x := v.(type) {
		case bool:
		case string:
			bad("want true or false without quotes, not the string %q", x)
		default:
			bad("want true or false, not %s", describe(v))
		}
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.String:
		switch x := v.(type) {
		case []any:
			for i, e := range x {
				if _, ok := e.(string); !ok {
					walkValue(out, fmt.Sprintf("%s[%d]", path, i), bare, label, e, t.Elem())
				}
			}
		case string:
			bad("want a list in brackets: %s = %s, not a single string", lastKey(bare), quotedList(x))
		default:
			bad("want a list of strings in brackets, e.g. [\"...\"], not %s", describe(v))
		}
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
		tables, ok := tableList(v)
		switch {
		case ok:
			inner := "[[" + bare + "]]"
			if strings.Contains(bare, ".") {
				inner = label + " " + lastKey(bare)
			}
			for i, m := range tables {
				walkTable(out, fmt.Sprintf("%s[%d]", path, i), bare, inner, m, t.Elem())
			}
		case !strings.Contains(bare, "."):
			if _, one := v.(map[string]any); one {
				bad("[%s] is a single table: write [[%s]] (double brackets) above each entry", bare, bare)
			} else {
				bad("want [[%s]] sections, not %s", bare, describe(v))
			}
		default:
			bad("want a list of tables in brackets, e.g. [ { ... }, { ... } ], not %s", describe(v))
		}
	case t.Kind() == reflect.Struct:
		switch x := v.(type) {
		case map[string]any:
			walkTable(out, path, bare, "["+bare+"]", x, t)
		case []map[string]any:
			bad("want one [%s] table, not [[%s]]", bare, bare)
		default:
			bad("want a [%s] table, not %s", bare, describe(v))
		}
	}
}

// tableList is v as an array of tables: [[name]] sections decode to
// []map[string]any, an inline [ {...}, {...} ] to []any of maps.
func tableList(v any) ([]map[string]any, bool) {
	switch x := v.(type) {
	case []map[string]any:
		return x, true
	case []any:
		out := make([]map[string]any, 0, len(x))
		for _, e := range x {
			m, ok := e.(map[string]any)
			if !ok {
				return nil, false
			}
			out = append(out, m)
		}
		return out, true
	}
	return nil, false
}

func lastKey(bare string) string {
	if i := strings.LastIndexByte(bare, '.'); i >= 0 {
		return bare[i+1:]
	}
	return bare
}

// quotedList is s split into words as a TOML list: the list a string
// given for a list was most likely meant to be (commands are not run by
// a shell).
func quotedList(s string) string {
	words := strings.Fields(s)
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = strconv.Quote(w)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func describe(v any) string {
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("the string %q", x)
	case int64:
		return fmt.Sprintf("the number %d", x)
	case float64:
		return fmt.Sprintf("the number %g", x)
	case bool:
		return fmt.Sprintf("%t", x)
	case []any, []map[string]any:
		return "a list"
	case map[string]any:
		return "a table"
	case time.Time:
		return "a date or time"
	}
	return fmt.Sprintf("a %T", v)
}

// sections is where each known key may be written, for "health_path is a
// key of [[backend]]" when it is written in the wrong place.
var sections = func() map[string][]string {
	out := map[string][]string{}
	var walk func(t reflect.Type, label string)
	walk = func(t reflect.Type, label string) {
		names, types := fields(t)
		for _, n := range names {
			ft := types[n]
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if label != "" {
				out[n] = append(out[n], label)
			}
			switch {
			case label == "" && ft.Kind() == reflect.Struct:
				walk(ft, "["+n+"]")
			case label == "" && ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
				walk(ft.Elem(), "[["+n+"]]")
			case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
				walk(ft.Elem(), label+" "+n)
			}
		}
	}
	walk(reflect.TypeOf(file{}), "")
	return out
}()

// unknownReason says why key k of the table label is not known: the
// nearest known key if one is close, or the sections it belongs in.
func unknownReason(label, k string, v any, known []string, types map[string]reflect.Type) string {
	top := label == "the top level"
	what := "unknown key"
	switch v.(type) {
	case map[string]any:
		if top {
			what = "unknown section [" + k + "]"
		}
	case []map[string]any:
		if top {
			what = "unknown section [[" + k + "]]"
		}
	}
	if s := nearest(k, known); s != "" {
		if top {
			s = sectionName(s, types[s])
		}
		return fmt.Sprintf("%s (did you mean %s?)", what, s)
	}
	if where := sections[k]; len(where) > 0 {
		return fmt.Sprintf("%s: %s is a key of %s, not of %s", what, k, andList(where), label)
	}
	return what
}

// sectionName is how a top-level key of type t is written: [name] or [[name]].
func sectionName(name string, t reflect.Type) string {
	switch {
	case t.Kind() == reflect.Struct:
		return "[" + name + "]"
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
		return "[[" + name + "]]"
	}
	return name
}

// nearest is the known key closest to k by edit distance (after folding
// case and '-' to '_'), if it is close: at most a third of k's length
// apart (at least 1), or one a prefix of the other of at least 3 letters.
// Ties give no suggestion.
func nearest(k string, known []string) string {
	norm := strings.ReplaceAll(strings.ToLower(k), "-", "_")
	best, bestD, tie := "", -1, false
	for _, c := range known {
		d := editDistance(norm, c)
		if d > max(1, len(k)/3) && !(min(len(norm), len(c)) >= 3 && (strings.HasPrefix(norm, c) || strings.HasPrefix(c, norm))) {
			continue
		}
		switch {
		case bestD < 0 || d < bestD:
			best, bestD, tie = c, d, false
		case d == bestD:
			tie = true
		}
	}
	if tie {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance between a and b (bytes: keys
// are ASCII).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// andList is "a", "a and b", "a, b and c".
func andList(s []string) string {
	if len(s) <= 1 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1]
}
