package metrics

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Process is the standard process_* metrics of one process, read from
// /proc and getrusage/getrlimit as Prometheus's own process collector
// reads them.
type Process struct {
	CPUSeconds float64   // user and system CPU time
	RSS        uint64    // resident memory, bytes
	VMS        uint64    // virtual memory, bytes
	OpenFDs    uint64    // open file descriptors
	MaxFDs     uint64    // the soft RLIMIT_NOFILE
	Start      time.Time // when the kernel started the process
}

// userHZ is the unit of the times in /proc/PID/stat: USER_HZ, 100 on
// every Linux architecture Go supports.
const userHZ = 100

// ReadProcess reads the Process metrics of the calling process.
func ReadProcess() (Process, error) {
	var p Process
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return p, fmt.Errorf("metrics: getrusage: %w", err)
	}
	p.CPUSeconds = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return p, fmt.Errorf("metrics: getrlimit: %w", err)
	}
	p.MaxFDs = rl.Cur
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return p, fmt.Errorf("metrics: %w", err)
	}
	p.OpenFDs = uint64(len(fds))
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return p, fmt.Errorf("metrics: %w", err)
	}
	st, err := parseStat(stat)
	if err != nil {
		return p, err
	}
	p.VMS, p.RSS = st.vsize, st.rssPages*uint64(os.Getpagesize())
	boot, err := bootTime()
	if err != nil {
		return p, err
	}
	p.Start = time.Unix(boot, 0).Add(time.Duration(st.startTicks) * time.Second / userHZ)
	return p, nil
}

type procStat struct {
	startTicks uint64 // field 22: start time, clock ticks after boot
	vsize      uint64 // field 23: bytes
	rssPages   uint64 // field 24
}

// parseStat reads /proc/PID/stat; the command name (field 2) may hold
// spaces and parentheses, so the fields are counted after its last ')'.
func parseStat(b []byte) (procStat, error) {
	var st procStat
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return st, fmt.Errorf("metrics: /proc/self/stat: no command name")
	}
	f := bytes.Fields(b[i+1:]) // f[0] is field 3
	if len(f) < 22 {
		return st, fmt.Errorf("metrics: /proc/self/stat: %d fields", len(f)+2)
	}
	var err error
	for _, x := range []struct {
		field int
		p     *uint64
	}{{22, &st.startTicks}, {23, &st.vsize}, {24, &st.rssPages}} {
		if *x.p, err = strconv.ParseUint(string(f[x.field-3]), 10, 64); err != nil {
			return st, fmt.Errorf("metrics: /proc/self/stat field %d: %w", x.field, err)
		}
	}
	return st, nil
}

// bootTime is the btime line of /proc/stat, in unix seconds.
func bootTime() (int64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("metrics: %w", err)
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("btime ")); ok {
			n, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("metrics: /proc/stat btime: %w", err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("metrics: /proc/stat has no btime")
}
