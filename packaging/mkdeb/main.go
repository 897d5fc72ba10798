// Command mkdeb is `make deb`: it builds baton's Debian package from
// ../nfpm.yaml with nfpm used as a library (no nfpm binary to download).
// It is a module of its own, so that nfpm and its dependencies stay out of
// baton's go.mod.
//
//	mkdeb -config packaging/nfpm.yaml -version V -bin B -man M -readme R -out dist/baton_V_amd64.deb
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mkdeb:", err)
		os.Exit(1)
	}
}

func run() error {
	cfgPath := flag.String("config", "packaging/nfpm.yaml", "nfpm `file`")
	version := flag.String("version", "", "package version (Debian syntax)")
	bin := flag.String("bin", "", "the baton `binary` to package")
	man := flag.String("man", "", "the gzipped man page")
	readme := flag.String("readme", "", "the gzipped README")
	out := flag.String("out", "", "the .deb to write")
	flag.Parse()
	if *version == "" || *bin == "" || *man == "" || *readme == "" || *out == "" {
		return fmt.Errorf("-version, -bin, -man, -readme and -out are required")
	}
	vars := map[string]string{"VERSION": *version, "BIN": *bin, "MAN": *man, "README": *readme}
	cfg, err := nfpm.ParseFileWithEnvMapping(*cfgPath, func(k string) string { return vars[k] })
	if err != nil {
		return fmt.Errorf("%s: %w", *cfgPath, err)
	}
	// nfpm expands variables in some fields only; the files' sources here.
	for _, c := range cfg.Contents {
		c.Source = os.Expand(c.Source, func(k string) string { return vars[k] })
	}
	info, err := cfg.Get("deb")
	if err != nil {
		return err
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.Validate(info); err != nil {
		return err
	}
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	if err := deb.Default.Package(info, f); err != nil {
		f.Close()
		os.Remove(*out)
		return fmt.Errorf("package: %w", err)
	}
	return f.Close()
}
