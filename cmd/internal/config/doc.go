// Package config reads baton's TOML configuration file, strictly, into the
// plain option structs of handoff, proxy and backends. A Config that Load
// returned is valid.
//
// Every error is an *Error that names the file (with the line where the
// TOML parser gives one), the key with the index of its [[backend]] or
// [[tls]] entry ("backend[1].health_path") and the reason in words an
// operator acts on, never a Go parser's message: a key the decoding
// structs do not have is "unknown key", with the nearest known key
// suggested when it is close ("did you mean health_path?") or the section
// it belongs in; a value of the wrong type says what to write instead (a
// duration in quotes, a list in brackets, [[backend]] for [backend]). The
// decoding structs (file, fileBackend, ...) are the one list of keys:
// checkShape reads them by their toml tags.
package config
