// Command tfref is a reference for the bench, not a product: the minimal
// github.com/cloudflare/tableflip program, after the library's own
// net/http example. It serves a fixed 100-byte body (the bench's small.txt)
// on every path, upgrades itself on SIGHUP, and writes its PID file once
// the new process listens and calls Ready.
//
//	tfref -listen 127.0.0.1:8080 -pid-file /tmp/tfref.pid
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "`address` to listen on")
	pidFile := flag.String("pid-file", "", "`path` of the PID file")
	flag.Parse()
	log.SetPrefix(fmt.Sprintf("tfref %d: ", os.Getpid()))

	upg, err := tableflip.New(tableflip.Options{PIDFile: *pidFile})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Stop()

	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGHUP)
		for range sig {
			if err := upg.Upgrade(); err != nil {
				log.Println("upgrade failed:", err)
			}
		}
	}()

	ln, err := upg.Listen("tcp", *listen)
	if err != nil {
		log.Fatal("listen: ", err)
	}
	body := make([]byte, 100) // the bench's small.txt
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	body[len(body)-1] = '\n'
	ctype := []string{"text/plain"}
	clen := []string{strconv.Itoa(len(body))}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			h := w.Header()
			h["Content-Type"] = ctype
			h["Content-Length"] = clen
			w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() {
		if err := srv.Serve(ln); err != http.ErrServerClosed {
			log.Println("serve:", err)
		}
	}()

	if err := upg.Ready(); err != nil {
		log.Fatal(err)
	}
	<-upg.Exit()

	// No new upgrade can happen before this process has exited.
	time.AfterFunc(30*time.Second, func() {
		log.Println("graceful shutdown timed out")
		os.Exit(1)
	})
	srv.Shutdown(context.Background())
}
