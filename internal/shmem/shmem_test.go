package shmem

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestCreateSealed: a region Create made can neither shrink nor grow, so
// no one holding the memfd can leave a mapping over missing pages (a
// truncated memfd makes every process touching the mapping die of SIGBUS).
// The same holds through a second descriptor opened by /proc, as root may.
func TestCreateSealed(t *testing.T) {
	r, err := Create("baton-test", 8192)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	if !r.Sealed {
		t.Error("Sealed: got false, want true")
	}
	other, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(int(r.File.Fd())), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for _, f := range []*os.File{r.File, other} {
		for _, size := range []int64{0, 4096, 16384} {
			if err := f.Truncate(size); !errors.Is(err, unix.EPERM) {
				t.Errorf("truncate to %d: got %v, want EPERM", size, err)
			}
		}
	}
	r.Mem[8191] = 1 // the last page is there
}

// memfd makes a memfd the way an older baton did (no seals) of size bytes.
func memfd(t *testing.T, name string, size int64) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), name)
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestOpenChecksIdentity: Open maps only the memfd it expects, at its
// size; a descriptor that names anything else is refused, saying what it
// is.
func TestOpenChecksIdentity(t *testing.T) {
	dir := t.TempDir()
	regular, err := os.Create(filepath.Join(dir, "baton-test"))
	if err != nil {
		t.Fatal(err)
	}
	if err := regular.Truncate(4096); err != nil {
		t.Fatal(err)
	}
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(sp[1])
	sock := os.NewFile(uintptr(sp[0]), "socket")
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	pw.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tcp, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	var shm *os.File
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		p := filepath.Join("/dev/shm", "baton-test-"+filepath.Base(dir))
		if shm, err = os.Create(p); err != nil {
			t.Fatal(err)
		}
		os.Remove(p)
		shm.Truncate(4096)
	}

	tests := []struct {
		name string
		f    *os.File
		want string // in the error; "" for success
	}{
		{"the memfd", memfd(t, "baton-test", 4096), ""},
		{"a regular file", regular, "is the file " + regular.Name() + ", not the memfd baton-test"},
		{"a socket", sock, "is a socket (socket:["},
		{"a listening TCP socket", tcp, "is a socket (socket:["},
		{"a pipe", pr, "is a pipe (pipe:["},
		{"another memfd", memfd(t, "baton-other", 4096), "is the memfd baton-other, not the memfd baton-test"},
		{"truncated", memfd(t, "baton-test", 4095), "has size 4095, want 4096"},
		{"grown", memfd(t, "baton-test", 8192), "has size 8192, want 4096"},
		{"empty", memfd(t, "baton-test", 0), "has size 0, want 4096"},
	}
	if shm != nil {
		tests = append(tests, struct {
			name string
			f    *os.File
			want string
		}{"a deleted file in /dev/shm", shm, "(deleted), not the memfd baton-test"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Open(tt.f, "baton-test", 4096)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				if r.Sealed {
					t.Error("Sealed: got true for a memfd made without seals")
				}
				r.Close()
				return
			}
			if err == nil {
				r.Close()
				t.Fatalf("Open: got a region, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error: got %q, want it to contain %q", err, tt.want)
			}
			// Open took f over and closed it.
			if _, err := unix.FcntlInt(tt.f.Fd(), unix.F_GETFD, 0); err == nil {
				t.Error("f is still open after a refused Open")
			}
		})
	}
}

func TestText(t *testing.T) {
	words := make([]uint64, 2)
	StoreBytes(words, []byte("hello"))
	for _, tt := range []struct {
		n    uint64
		want string
	}{
		{0, ""}, {5, "hello"}, {16, "hello\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"},
		{17, "hello\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"},
		{1 << 63, "hello\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"},
		{^uint64(0), "hello\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"},
	} {
		if got := Text(words, tt.n); got != tt.want {
			t.Errorf("Text(n=%d): got %q, want %q", tt.n, got, tt.want)
		}
	}
}

func TestName(t *testing.T) {
	lower := func(s string) bool { return s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyz") == "" }
	tests := []struct {
		name      string
		bytes     string
		n         uint64
		want      string
		fixed, ok bool
	}{
		{"in order", "web", 3, "web", false, true},
		{"full", "abcdefghabcdefgh", 16, "abcdefghabcdefgh", false, true},
		{"length too large", "web", 1 << 63, "web", true, true},
		{"length all ones", "web", ^uint64(0), "web", true, true},
		{"length short", "web", 2, "web", true, true},
		{"length zero", "web", 0, "web", true, true},
		{"invalid byte", "w\x01b", 3, "", false, false},
		{"bytes after the zero", "we\x00b", 2, "", false, false},
		{"empty", "", 0, "", false, false},
		{"empty with a length", "", 4, "", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			words := make([]uint64, 2)
			StoreBytes(words, []byte(tt.bytes))
			got, fixed, ok := Name(words, tt.n, lower)
			if got != tt.want || fixed != tt.fixed || ok != tt.ok {
				t.Errorf("Name: got %q, fixed %v, ok %v; want %q, %v, %v", got, fixed, ok, tt.want, tt.fixed, tt.ok)
			}
		})
	}
}
