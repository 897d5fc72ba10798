//go:build race

package main

// raceEnabled: the baton binary under test is built with -race too.
const raceEnabled = true
