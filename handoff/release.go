package handoff

import (
	"errors"
	"os"
	"reflect"
	"unsafe"

	"github.com/cloudflare/tableflip"
)

// releaseSuccessor tells the next generation that this one no longer holds
// anything it needs, so it may upgrade again while this one still drains.
//
// why: tableflip refuses Upgrade() until the parent process has exited
// ("parent hasn't exited"; upstream declined to change it, cloudflare/
// tableflip#52). The child learns of the exit when its end of a pipe sees
// EOF; the parent keeps the write end in Upgrader.exitFd so that only the
// OS closes it. Once this process has closed every listener its child
// inherited, nothing the child could hand on is still in use here, which is
// what the wait protects; so we close that write end ourselves and let
// draining generations overlap, as HAProxy and nginx do. tableflip is pinned
// to v1.2.3 (go.mod); TestReleaseSuccessorFindsPipe fails if its layout
// changes, and at runtime a mismatch only means the old behaviour: the next
// upgrade waits for this process to exit.
func releaseSuccessor(upg *tableflip.Upgrader) error {
	f, err := exitPipe(upg)
	if err != nil {
		return err
	}
	if f == nil {
		return errors.New("handoff: no successor pipe (no upgrade has succeeded)")
	}
	return f.Close()
}

// exitPipe takes the write end of the exit pipe out of upg.exitFd, or
// returns nil if it is empty.
func exitPipe(upg *tableflip.Upgrader) (*os.File, error) {
	ch, err := exitFdChan(upg)
	if err != nil {
		return nil, err
	}
	v, ok := ch.TryRecv()
	if !ok {
		return nil, nil
	}
	holder := reflect.New(v.Type()).Elem()
	holder.Set(v)
	field := holder.Field(0)
	return *(**os.File)(unsafe.Pointer(field.UnsafeAddr())), nil
}

// exitFdChan finds Upgrader.exitFd, a chan of a one-field struct holding
// an *os.File, and checks its shape.
func exitFdChan(upg *tableflip.Upgrader) (reflect.Value, error) {
	bad := errors.New("handoff: tableflip.Upgrader has no exitFd of the expected shape (tableflip version changed?)")
	field := reflect.ValueOf(upg).Elem().FieldByName("exitFd")
	if !field.IsValid() {
		return reflect.Value{}, bad
	}
	t := field.Type()
	if t.Kind() != reflect.Chan || t.Elem().Kind() != reflect.Struct || t.Elem().NumField() != 1 ||
		t.Elem().Field(0).Type != reflect.TypeOf((*os.File)(nil)) {
		return reflect.Value{}, bad
	}
	return reflect.NewAt(t, unsafe.Pointer(field.UnsafeAddr())).Elem(), nil
}
