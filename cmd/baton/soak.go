package main

import (
	"fmt"
	"io"
)

func cmdSoak(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "baton soak: not built yet")
	return 2
}
