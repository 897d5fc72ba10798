package handoff

import (
	"io"
	"os"
	"reflect"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/cloudflare/tableflip"
)

// tableflip.New succeeds once per process, and -count may run a test more
// than once in the same process.
var (
	testUpgOnce sync.Once
	testUpg     *tableflip.Upgrader
	testUpgErr  error
)

// TestReleaseSuccessorFindsPipe checks that tableflip.Upgrader still has
// the exitFd that releaseSuccessor relies on. tableflip allows one Upgrader
// per process, so this is the only test in the package that makes one.
func TestReleaseSuccessorFindsPipe(t *testing.T) {
	testUpgOnce.Do(func() { testUpg, testUpgErr = tableflip.New(tableflip.Options{}) })
	if testUpgErr != nil {
		t.Fatalf("tableflip.New: %v", testUpgErr)
	}
	t.Cleanup(testUpg.Stop) // idempotent; exitFd is still there after Stop

	ch, err := exitFdChan(testUpg)
	if err != nil {
		t.Fatalf("exitFdChan: %v (tableflip layout changed?)", err)
	}
	if got, want := ch.Len(), 0; got != want {
		t.Errorf("exitFd length: got %d, want %d", got, want)
	}

	f, err := exitPipe(testUpg)
	if err != nil {
		t.Fatalf("exitPipe: got error %v, want none", err)
	}
	if f != nil {
		t.Errorf("exitPipe: got %v, want nil (no upgrade happened)", f)
	}

	if err := releaseSuccessor(testUpg); err == nil {
		t.Error("releaseSuccessor: got nil, want an error (no successor pipe)")
	}

	// What an upgrade leaves in exitFd: the write end of the pipe whose EOF
	// tells the child its parent is gone. releaseSuccessor must close it.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(); _ = w.Close() })
	v := reflect.New(ch.Type().Elem()).Elem()
	field := v.Field(0)
	reflect.NewAt(field.Type(), unsafe.Pointer(field.UnsafeAddr())).Elem().Set(reflect.ValueOf(w))
	if !ch.TrySend(v) {
		t.Fatal("exitFd: cannot put the pipe in")
	}
	if err := releaseSuccessor(testUpg); err != nil {
		t.Fatalf("releaseSuccessor: got %v, want nil", err)
	}
	if got := ch.Len(); got != 0 {
		t.Errorf("exitFd length after releaseSuccessor: got %d, want 0", got)
	}
	_ = r.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("successor's end of the pipe: got %d bytes, %v, want EOF (write end closed)", n, err)
	}
}
