package main

import (
	"crypto/tls"
	"encoding/binary"
	"encoding/gob"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/backends/backendtest"
	"github.com/batonproxy/baton/cmd/internal/control"
)

// Offsets in the shared tables, as laid out in backends/state.go and
// cmd/internal/metrics/table.go: the layout is a contract between baton
// versions, so these do not move.
const (
	stateSlot0       = 64             // headerSize: the first slot, the first backend's
	stateNameLen     = 8              // stateSlot.nameLen
	stateWord        = 80             // stateSlot.word
	stateInflight    = 96             // stateSlot.inflight
	metricsSlot1     = 16<<10 + 4<<10 // globalSize + slotSize: slot 1 (slot 0 is "(none)")
	metricsNameLen   = 8
	ticketCountField = 12 // the key count in the key file's header
)

// memfdPath is /proc/PID/fd/N for a descriptor that process pid holds on
// the memfd called name.
func memfdPath(t testing.TB, pid int, name string) string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if link, err := os.Readlink(p); err == nil && link == "/memfd:"+name+" (deleted)" {
			return p
		}
	}
	t.Fatalf("baton pid %d holds no memfd %s", pid, name)
	return ""
}

// poke writes val at off into the memfd name of the serving baton, as a
// stray write by anything running as root (or as baton) could.
func (b *batonProc) poke(name string, off int64, val []byte) {
	b.t.Helper()
	f, err := os.OpenFile(memfdPath(b.t, b.pid(), name), os.O_RDWR, 0)
	if err != nil {
		b.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(val, off); err != nil {
		b.t.Fatalf("writing memfd %s: %v", name, err)
	}
}

func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// logLines counts the lines of b's log that contain every one of parts.
func (b *batonProc) logLines(parts ...string) int {
	n := 0
	for _, line := range strings.Split(b.log(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

// wantLog fails t unless b logged a line with every one of parts.
func (b *batonProc) wantLog(t *testing.T, parts ...string) {
	t.Helper()
	if b.logLines(parts...) == 0 {
		t.Errorf("the log has no line with %q", parts)
	}
}

const repairMsg = `msg="corrupt shared memory dropped"`

// tlsGet makes one HTTPS request on a new connection with cfg (and its
// session cache) and says whether the handshake resumed a session.
func tlsGet(t *testing.T, addr string, cfg *tls.Config) bool {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
	resp, err := c.Get("https://" + addr + "/small.txt")
	if err != nil {
		t.Fatalf("HTTPS GET: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || string(body) != smallBody {
		t.Fatalf("HTTPS GET: status %d, %d bytes (%v)", resp.StatusCode, len(body), err)
	}
	return resp.TLS.DidResume
}

// TestCorruptSharedMemory: Issue 21. What the serving baton keeps in
// shared memory (the backend state table, the metrics table, the TLS
// session ticket keys) is corrupted in place while it serves under load,
// as a stray write by root could; then `baton ctl upgrade`. The new
// generation used to panic (one bad name length: loadText sliced out of
// range) or refuse the ticket keys, so that upgrade and every later one
// failed until baton was restarted from scratch. Now each upgrade
// succeeds, the log says what was dropped and why, no request fails, and
// the next upgrade works and repairs nothing more. A table that cannot be
// used at all (its magic overwritten) is replaced by a new one; a table
// cannot be truncated under the processes that map it.
func TestCorruptSharedMemory(t *testing.T) { forEngines(t, testCorruptSharedMemory) }

func testCorruptSharedMemory(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	var site *tlsSite
	b := newBaton(t, func(dir string) string {
		site = newTLSSite(t, dir)
		return batonConfig(dir, "", backendTOML("web1", lt.URL)) + tlsTOML
	})
	b.start()
	tlsAddr := b.tlsAddr()
	l := startLoad(t, b.addr(), loadSpec{GoGET: 4, Raw: 2, Post: 1})
	hl := startHTTPSLoad(t, tlsAddr, site.clientConfig("site.test"), httpsSpec{H2Get: 2, H1Get: 1, NewConn: 1})
	progress := func(t *testing.T) {
		t.Helper()
		l.progress(t, 10)
		hl.progress(t, 5)
	}
	progress(t)
	upgrade := func(t *testing.T) {
		t.Helper()
		old := b.pid()
		out, errOut, code := b.ctl("upgrade")
		if code != 0 {
			t.Fatalf("ctl upgrade: exit %d: %s %s", code, out, errOut)
		}
		if p := b.pid(); p == old {
			t.Fatalf("pid file still names %d after the upgrade", old)
		}
		progress(t)
	}
	// upgradeClean is the next upgrade: it works and repairs nothing.
	upgradeClean := func(t *testing.T) {
		t.Helper()
		before := b.logLines(repairMsg)
		upgrade(t)
		if n := b.logLines(repairMsg); n != before {
			t.Errorf("the upgrade after the repair repaired %d more things:\n%s", n-before, tail(b.log(), 3000))
		}
	}
	web1Up := func(t *testing.T) {
		t.Helper()
		b.waitStatus(10*time.Second, "web1 up", func(st control.Status) bool {
			return len(st.Backends) == 1 && st.Backends[0].State == "up" && st.Backends[0].InFlight >= 0
		})
	}

	t.Run("state table", func(t *testing.T) {
		b.poke("baton-backends", stateSlot0+stateNameLen, le64(^uint64(0))) // the length of Issue 21
		b.poke("baton-backends", stateSlot0+stateWord, le64(0x7f))          // an unknown phase: out of rotation until repaired
		b.poke("baton-backends", stateSlot0+stateInflight, le64(1<<40))
		upgrade(t)
		b.wantLog(t, repairMsg, "table=baton-backends", `entry="slot 0 (web1)"`, `field="name length"`, "length rebuilt from the name")
		b.wantLog(t, repairMsg, "table=baton-backends", "field=state", "unknown phase", "readmitted by its next passing health check")
		b.wantLog(t, repairMsg, "table=baton-backends", `field="in-flight count"`, `problem="10995116277`, "rebuilt as")
		web1Up(t)
		upgradeClean(t)
	})

	t.Run("metrics table", func(t *testing.T) {
		b.poke("baton-metrics", metricsSlot1+metricsNameLen, le64(1<<63))
		upgrade(t)
		b.wantLog(t, repairMsg, "table=baton-metrics", `entry="slot 1 (web1)"`, `field="name length"`)
		upgradeClean(t)
	})

	t.Run("ticket keys", func(t *testing.T) {
		cli := site.clientConfig("site.test")
		cli.ClientSessionCache = tls.NewLRUClientSessionCache(4)
		tlsGet(t, tlsAddr, cli)
		if !tlsGet(t, tlsAddr, cli) {
			t.Fatal("a session did not resume before the keys were touched")
		}
		b.poke("baton-tickets", ticketCountField, []byte{0xff, 0xff, 0xff, 0xff})
		upgrade(t)
		b.wantLog(t, repairMsg, "table=baton-tickets", "entry=file", "4294967295 keys", "replaced by a fresh key")
		// The old session makes a full handshake, served as any other.
		if tlsGet(t, tlsAddr, cli) {
			t.Error("a session under the replaced keys resumed")
		}
		// Sessions under the fresh key resume across the next upgrade.
		fresh := site.clientConfig("site.test")
		fresh.ClientSessionCache = tls.NewLRUClientSessionCache(4)
		tlsGet(t, tlsAddr, fresh)
		upgradeClean(t)
		if !tlsGet(t, tlsAddr, fresh) {
			t.Error("a session under the fresh key did not resume after the next upgrade")
		}
	})

	t.Run("unusable tables", func(t *testing.T) {
		b.poke("baton-backends", 0, le64(0)) // the magic
		b.poke("baton-metrics", 0, le64(0))
		upgrade(t)
		b.wantLog(t, "refused the backend state table", "magic 0x0, version 1: not a state table of this layout", "every backend starts down")
		b.wantLog(t, "refused the metrics table", "not a metrics table of this layout")
		web1Up(t)
		upgradeClean(t)
	})

	t.Run("truncate", func(t *testing.T) {
		// A truncated table would kill every process mapping it (SIGBUS on
		// the missing pages): the tables are sealed at their size.
		for _, name := range []string{"baton-backends", "baton-metrics"} {
			f, err := os.OpenFile(memfdPath(t, b.pid(), name), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, size := range []int64{0, 4096, 1 << 20} {
				if err := f.Truncate(size); !errors.Is(err, unix.EPERM) {
					t.Errorf("truncate %s to %d: %v, want EPERM (sealed)", name, size, err)
				}
			}
			f.Close()
		}
		progress(t)
		upgradeClean(t)
	})

	l.check(t)
	hl.check(t)
	ids, err := lt.PostIDs()
	if err != nil {
		t.Fatal(err)
	}
	checkPostsOnce(t, l.postIDs(), ids)
}

// TestInheritedFilesChecked: the descriptors a previous generation passes
// are taken by number, their names coming over a pipe (tableflip). A
// baton started with descriptors that name something else under the
// table names (a regular file holding a valid state table header, a
// socket, a pipe) refuses each with what it is, starts from new tables and
// serves: a bad inherited file costs the old state, not the upgrade. Here
// the test is the previous generation, speaking tableflip's and handoff's
// protocol to a real baton.
func TestInheritedFilesChecked(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := newBaton(t, func(dir string) string { return batonConfig(dir, "", backendTOML("web1", lt.URL)) })
	t.Cleanup(b.cleanup)

	// A regular file the size of the state table, with its magic: mapped
	// as the table before (it passed the size and magic checks).
	regular, err := os.Create(filepath.Join(b.dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	defer regular.Close()
	if err := regular.Truncate(64 + 128*512); err != nil {
		t.Fatal(err)
	}
	if _, err := regular.WriteAt(append(le64(0x31544e4f54414231), le64(1)...), 0); err != nil {
		t.Fatal(err)
	}
	sock, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	sockTheirs := os.NewFile(uintptr(sock[1]), "socket")
	defer sockTheirs.Close()
	defer unix.Close(sock[0])
	pipeR, pipeW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pipeR.Close()
	defer pipeW.Close()
	// handoff's hello: this "previous generation" is generation 1.
	hello, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	helloOurs, helloTheirs := os.NewFile(uintptr(hello[0]), "hello"), os.NewFile(uintptr(hello[1]), "hello-child")
	defer helloOurs.Close()
	msg, _ := json.Marshal(map[string]any{"generation": 2, "parent_pid": os.Getpid(), "started": time.Now()})
	if _, err := helloOurs.Write(append(msg, '\n')); err != nil {
		t.Fatal(err)
	}
	// tableflip's pipes: readiness (fd 3) and the names of fds 5 and up (fd 4).
	readyR, readyW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer readyR.Close()
	namesR, namesW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(b.logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(b.bin, "run", "--config", b.cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "TABLEFLIP_HAS_PARENT_7DIU3=yes")
	cmd.ExtraFiles = []*os.File{readyW, namesR, helloTheirs, regular, sockTheirs, pipeR}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	readyW.Close()
	namesR.Close()
	helloTheirs.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	names := [][]string{{"fd", "baton.handoff", ""}, {"fd", stateFile, ""}, {"fd", metricsFile, ""}, {"fd", ticketsFile, ""}}
	if err := gob.NewEncoder(namesW).Encode(names); err != nil {
		t.Fatal(err)
	}

	ready := make(chan error, 1)
	go func() {
		var one [1]byte
		_, err := io.ReadFull(readyR, one[:])
		if err == nil && one[0] != 42 {
			err = fmt.Errorf("readiness byte %d, want 42", one[0])
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("baton did not become ready: %v\n%s", err, b.log())
		}
	case err := <-exited:
		t.Fatalf("baton exited at start: %v\n%s", err, b.log())
	case <-time.After(30 * time.Second):
		t.Fatalf("baton not ready after 30s\n%s", b.log())
	}
	// The "previous generation" exits.
	namesW.Close()
	helloOurs.Close()

	b.wantLog(t, "refused the backend state table", "is the file "+regular.Name()+", not the memfd baton-backends")
	b.wantLog(t, "refused the metrics table", "is a socket (socket:[", "not the memfd baton-metrics")
	b.wantLog(t, "refused the TLS session ticket keys", "is a pipe (pipe:[", "not the memfd baton-tickets")
	b.waitStatus(10*time.Second, "web1 up", func(st control.Status) bool {
		return len(st.Backends) == 1 && st.Backends[0].State == "up"
	})
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + b.addr() + "/small.txt")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != smallBody {
		t.Errorf("GET: status %d, %d bytes", resp.StatusCode, len(body))
	}
	// The regular file was not written to.
	if fi, err := regular.Stat(); err != nil || fi.Size() != 64+128*512 {
		t.Errorf("the regular file: %v, size %d", err, fi.Size())
	}
	if err := syscall.Kill(cmd.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		t.Error("baton did not stop within 20s of SIGTERM")
	}
}
