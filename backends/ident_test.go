package backends

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestParseStat(t *testing.T) {
	tail := " 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 424242 19 20 21 22\n"
	for _, tc := range []struct {
		name, in string
		want     procStat
		err      bool
	}{
		{"plain", "1234 (sleep) S 77" + tail, procStat{comm: "sleep", state: 'S', ppid: 77, start: 424242}, false},
		{"spaces and parens in comm", "1234 (a) b (c) R 1" + tail, procStat{comm: "a) b (c", state: 'R', ppid: 1, start: 424242}, false},
		{"zombie", "9 (apache2) Z 8" + tail, procStat{comm: "apache2", state: 'Z', ppid: 8, start: 424242}, false},
		{"no comm", "1234 sleep S 77" + tail, procStat{}, true},
		{"truncated", "1234 (sleep) S 77 1 2 3", procStat{}, true},
		{"bad starttime", "1234 (sleep) S 77 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 x 19", procStat{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStat([]byte(tc.in))
			if (err != nil) != tc.err {
				t.Fatalf("parseStat(%q) error %v, want error %v", tc.in, err, tc.err)
			}
			if got != tc.want {
				t.Errorf("parseStat(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseStatSelf(t *testing.T) {
	st, err := readStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.ppid != os.Getppid() || st.start == 0 || st.state == 'Z' {
		t.Errorf("own stat %+v: want ppid %d, a start time, not a zombie", st, os.Getppid())
	}
}

func TestSocketInode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"socket:[12345]", 12345, true},
		{"pipe:[12345]", 0, false},
		{"/dev/null", 0, false},
		{"socket:[x]", 0, false},
		{"socket:[12", 0, false},
	} {
		if got, ok := socketInode(tc.in); got != tc.want || ok != tc.ok {
			t.Errorf("socketInode(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestParseTCP(t *testing.T) {
	const header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	for _, tc := range []struct {
		name, in string
		want     []string // ip:port/inode
		err      bool
	}{
		{"v4 listen and established", header +
			"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n" +
			"   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1\n" +
			"   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0 100 0 0 10 0\n",
			[]string{"127.0.0.1:8080/111", "0.0.0.0:80/333"}, false},
		{"v6", header +
			"   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 444 1 0 100 0 0 10 0\n" +
			"   1: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 555 1 0 100 0 0 10 0\n" +
			"   2: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 666 1 0 100 0 0 10 0\n",
			[]string{"[::1]:8080/444", "[::]:80/555", "127.0.0.1:80/666"}, false},
		{"header only", header, nil, false},
		{"short line", header + "   0: 0100007F:1F90 00000000:0000 0A\n", nil, true},
		{"bad address", header + "   0: 0100007:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1\n", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ls, err := parseTCP(tc.in)
			if (err != nil) != tc.err {
				t.Fatalf("error %v, want error %v", err, tc.err)
			}
			var got []string
			for _, l := range ls {
				got = append(got, fmt.Sprintf("%s/%d", net.JoinHostPort(l.ip.String(), fmt.Sprint(l.port)), l.inode))
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestExeMatches(t *testing.T) {
	for _, tc := range []struct {
		exe, want string
		ok        bool
	}{
		{"/usr/sbin/apache2", "apache2", true},
		{"/usr/sbin/apache2", "/usr/sbin/apache2", true},
		{"/usr/sbin/apache2", "/usr/local/sbin/apache2", false},
		{"/usr/bin/sleep", "apache2", false},
		{"/opt/httpd/bin/httpd", "httpd", true},
		{"/usr/sbin/lighttpd", "lighttpd-angel", false},
	} {
		if got := exeMatches(tc.exe, tc.want); got != tc.ok {
			t.Errorf("exeMatches(%q, %q) = %v, want %v", tc.exe, tc.want, got, tc.ok)
		}
	}
}

// TestVerifyProcess runs verifyProcess on real processes: this one, a
// sleep, and a listener of this process's own (as a server that listens,
// named by base name and by full path).
func TestVerifyProcess(t *testing.T) {
	sleep := exec.Command("sleep", "1000")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sleep.Process.Kill()
		_ = sleep.Wait()
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	exe, err := procExe(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	apache := Config{Name: "web", Kind: KindApache, PIDFile: "/x/apache.pid", URL: "http://127.0.0.1:1"}
	for _, tc := range []struct {
		name string
		c    Config
		pid  int
		gens map[int]bool
		want string // "" for ok
	}{
		{"sleep", apache, sleep.Process.Pid, nil, fmt.Sprintf("pid file /x/apache.pid names pid %d (%s), not apache2; refusing to signal it", sleep.Process.Pid, sleep.Path)},
		{"itself", apache, os.Getpid(), nil, fmt.Sprintf("names pid %d (baton itself, %s), not apache2", os.Getpid(), exe)},
		{"parent", apache, os.Getppid(), nil, fmt.Sprintf("names pid %d (an ancestor of baton", os.Getppid())},
		{"a generation", withExe(apache, "sleep"), sleep.Process.Pid, map[int]bool{sleep.Process.Pid: true}, "(baton, "},
		{"right exe, not listening", withExe(apache, "sleep"), sleep.Process.Pid, nil, "which does not listen on 127.0.0.1:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := verifyProcess(tc.c, tc.pid, tc.gens)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("verifyProcess: %v, want %q", err, tc.want)
			}
		})
	}
	// A process that listens passes (this one would be refused as baton
	// itself, so look at the listening half only).
	if ok, err := listensOn(os.Getpid(), ln.Addr().String()); err != nil || !ok {
		t.Errorf("listensOn(self, %s) = %v, %v; want true", ln.Addr(), ok, err)
	}
	if ok, err := listensOn(sleep.Process.Pid, ln.Addr().String()); err != nil || ok {
		t.Errorf("listensOn(sleep, %s) = %v, %v; want false", ln.Addr(), ok, err)
	}
	if ok, err := listensOn(os.Getpid(), "localhost:"+fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)); err != nil || !ok {
		t.Errorf("listensOn(self, localhost) = %v, %v; want true", ok, err)
	}
}

func withExe(c Config, exe string) Config {
	c.ProcessExe = exe
	return c
}
