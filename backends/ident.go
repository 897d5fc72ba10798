package backends

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// What baton checks before it signals the process a PID file names (Issue
// 7: it used to signal whatever PID was there, sleep and baton itself
// included): the process is no baton, runs the server's binary, and
// listens on the backend's port, so a PID reused by another instance of
// the same server does not pass either. All of it comes from /proc.

// procStat is what baton reads from /proc/PID/stat.
type procStat struct {
	comm  string
	state byte
	ppid  int
	start uint64 // field 22: clock ticks after boot at which it started
}

// parseStat parses the text of /proc/PID/stat. The command name is in
// parentheses and may itself contain spaces and parentheses, so the
// fields are counted from the last ')'.
func parseStat(b []byte) (procStat, error) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return procStat{}, fmt.Errorf("stat %q: no command name", b)
	}
	f := strings.Fields(string(b[end+1:]))
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("stat %q: too few fields", b)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return procStat{}, fmt.Errorf("stat: ppid %q: %w", f[1], err)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("stat: starttime %q: %w", f[19], err)
	}
	return procStat{comm: string(b[open+1 : end]), state: f[0][0], ppid: ppid, start: start}, nil
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// procExe is the path of pid's executable, without the " (deleted)" the
// kernel appends once the file was replaced or removed.
func procExe(pid int) (string, error) {
	p, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(p, " (deleted)"), nil
}

// socketInode parses an fd link target "socket:[12345]".
func socketInode(link string) (uint64, bool) {
	s, ok := strings.CutPrefix(link, "socket:[")
	if !ok || !strings.HasSuffix(s, "]") {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64)
	return n, err == nil
}

// socketInodes lists the inodes of pid's open sockets.
func socketInodes(pid int) (map[uint64]bool, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[uint64]bool{}
	for _, e := range ents {
		link, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue // closed meanwhile
		}
		if n, ok := socketInode(link); ok {
			out[n] = true
		}
	}
	return out, nil
}

// tcpListener is one LISTEN entry of /proc/net/tcp or tcp6.
type tcpListener struct {
	ip    net.IP
	port  int
	inode uint64
}

// tcpListen is the socket state LISTEN in /proc/net/tcp.
const tcpListen = "0A"

// parseTCP parses /proc/net/tcp or /proc/net/tcp6 and returns the
// listening sockets. Addresses are hex in the kernel's byte order: each
// 32-bit word little-endian, "0100007F:1F90" is 127.0.0.1:8080.
func parseTCP(text string) ([]tcpListener, error) {
	var out []tcpListener
	for i, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) == 0 {
			continue // header
		}
		if len(f) < 10 {
			return nil, fmt.Errorf("line %d: %d fields", i+1, len(f))
		}
		if f[3] != tcpListen {
			continue
		}
		host, port, ok := strings.Cut(f[1], ":")
		if !ok {
			return nil, fmt.Errorf("line %d: local address %q", i+1, f[1])
		}
		raw, err := hex.DecodeString(host)
		if err != nil || (len(raw) != 4 && len(raw) != 16) {
			return nil, fmt.Errorf("line %d: local address %q", i+1, f[1])
		}
		ip := make(net.IP, len(raw))
		for w := 0; w < len(raw); w += 4 {
			ip[w], ip[w+1], ip[w+2], ip[w+3] = raw[w+3], raw[w+2], raw[w+1], raw[w]
		}
		p, err := strconv.ParseUint(port, 16, 16)
		if err != nil {
			return nil, fmt.Errorf("line %d: port %q", i+1, port)
		}
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: inode %q", i+1, f[9])
		}
		out = append(out, tcpListener{ip: ip, port: int(p), inode: inode})
	}
	return out, nil
}

// listensOn reports whether one of pid's sockets listens on addr
// (host:port), on that address or on the wildcard one. It reads the
// tables of pid's own network namespace.
func listensOn(pid int, addr string) (bool, error) {
	host, portS, err := net.SplitHostPort(addr)
	if err != nil {
		return false, err
	}
	port, err := strconv.Atoi(portS)
	if err != nil {
		return false, fmt.Errorf("port %q: %w", portS, err)
	}
	var want []net.IP
	if ip := net.ParseIP(host); ip != nil {
		want = []net.IP{ip}
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
		cancel()
		if err != nil {
			return false, err
		}
		for _, a := range addrs {
			want = append(want, a.IP)
		}
	}
	inodes, err := socketInodes(pid)
	if err != nil {
		return false, err
	}
	for _, table := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/net/" + table)
		if errors.Is(err, os.ErrNotExist) {
			continue // no IPv6
		}
		if err != nil {
			return false, err
		}
		ls, err := parseTCP(string(b))
		if err != nil {
			return false, fmt.Errorf("/proc/%d/net/%s: %w", pid, table, err)
		}
		for _, l := range ls {
			if l.port != port || !inodes[l.inode] {
				continue
			}
			if l.ip.IsUnspecified() {
				return true, nil
			}
			for _, w := range want {
				if l.ip.Equal(w) {
					return true, nil
				}
			}
		}
	}
	return false, nil
}

// self is this process's identity, for telling a baton from a server.
type selfInfo struct {
	pid       int
	exe       string      // path, " (deleted)" removed
	exeStat   os.FileInfo // of the file itself, for os.SameFile
	ancestors map[int]bool
}

func lookupSelf() selfInfo {
	s := selfInfo{pid: os.Getpid(), ancestors: map[int]bool{}}
	s.exe, _ = procExe(s.pid)
	s.exeStat, _ = os.Stat("/proc/self/exe")
	for p, n := os.Getppid(), 0; p > 1 && n < 64; n++ {
		s.ancestors[p] = true
		st, err := readStat(p)
		if err != nil {
			break
		}
		p = st.ppid
	}
	return s
}

// expectedExe is the executable a backend's process must run: process_exe,
// else the server's binary name.
func (c Config) expectedExe() string {
	if c.ProcessExe != "" {
		return c.ProcessExe
	}
	return servers[c.Kind].Binary
}

// exeMatches reports whether exe (a path) is what want names: the same
// path (symbolic links resolved) for a full path, the same base name
// otherwise.
func exeMatches(exe, want string) bool {
	if !strings.Contains(want, "/") {
		return filepath.Base(exe) == want
	}
	if filepath.Clean(want) == exe {
		return true
	}
	if r, err := filepath.EvalSymlinks(want); err == nil && r == exe {
		return true
	}
	return false
}

// verifyProcess checks that pid, named by c's PID file, is the server c
// describes: not a baton (this process, one of its ancestors, any process
// running baton's executable, or a generation in gens), running c's
// expected executable, and listening on c's address. The error says what
// the process is and what was expected.
func verifyProcess(c Config, pid int, gens map[int]bool) error {
	self := lookupSelf()
	want := c.expectedExe()
	refuse := func(what, why string) error {
		return fmt.Errorf("pid file %s names pid %d (%s), %s; refusing to signal it", c.PIDFile, pid, what, why)
	}
	notWant := "not " + want
	exe, exeErr := procExe(pid)
	st, stErr := readStat(pid)
	if pid == self.pid {
		return refuse("baton itself, "+self.exe, notWant)
	}
	if exeErr != nil {
		what := "exe unreadable: " + exeErr.Error()
		if stErr == nil {
			what = "comm " + st.comm + ", " + what
		}
		return refuse(what, "cannot tell whether it is "+want)
	}
	if self.ancestors[pid] {
		return refuse("an ancestor of baton, "+exe, notWant)
	}
	isBaton := gens[pid] || (self.exe != "" && exe == self.exe)
	if !isBaton && self.exeStat != nil {
		if fi, err := os.Stat("/proc/" + strconv.Itoa(pid) + "/exe"); err == nil && os.SameFile(fi, self.exeStat) {
			isBaton = true
		}
	}
	if isBaton {
		return refuse("baton, "+exe, notWant)
	}
	if want == "" {
		return refuse(exe, "and the backend names no process_exe to expect")
	}
	if !exeMatches(exe, want) {
		return refuse(exe, notWant)
	}
	addr, err := hostPort(c.URL)
	if err != nil {
		return err
	}
	ok, err := listensOn(pid, addr)
	if err != nil {
		return refuse(exe, "cannot tell whether it listens on "+addr+": "+err.Error())
	}
	if !ok {
		return refuse(exe, "which does not listen on "+addr+" (another instance?)")
	}
	return nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture.
const clockTicks = 100

// procStartTime is when pid started, from its start time in ticks after
// boot and the boot time in /proc/stat (whole seconds).
func procStartTime(pid int) (time.Time, error) {
	st, err := readStat(pid)
	if err != nil {
		return time.Time{}, err
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			boot, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}, fmt.Errorf("/proc/stat btime %q: %w", v, err)
			}
			return time.Unix(boot, 0).Add(time.Duration(st.start) * time.Second / clockTicks), nil
		}
	}
	return time.Time{}, errors.New("/proc/stat: no btime")
}
