module github.com/batonproxy/baton/tools/bench

go 1.26.0

require github.com/cloudflare/tableflip v1.2.3

require golang.org/x/sys v0.50.0 // indirect
