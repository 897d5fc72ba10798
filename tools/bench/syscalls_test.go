package main

import "testing"

// straceOutput is strace 6.1's -c summary of a proxy; read never failed,
// so its errors column is blank.
const straceOutput = `% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 52.10    0.101000           5     17345           write
 40.00    0.080000           4     17380      4170 read
  7.00    0.014000          10      1400           epoll_pwait
  0.90    0.001800           2       700        12 futex
------ ----------- ----------- --------- --------- ----------------
100.00    0.196800           5     36825      4182 total
`

func TestParseStraceSummary(t *testing.T) {
	s, err := parseStraceSummary(straceOutput)
	if err != nil {
		t.Fatal(err)
	}
	if s.total != 36825 || s.errors != 4182 {
		t.Errorf("total %d calls, %d errors; want 36825, 4182", s.total, s.errors)
	}
	want := []syscallCount{{"read", 17380, 4170}, {"write", 17345, 0}, {"epoll_pwait", 1400, 0}, {"futex", 700, 12}}
	if len(s.calls) != len(want) {
		t.Fatalf("calls %v, want %v", s.calls, want)
	}
	for i := range want {
		if s.calls[i] != want[i] {
			t.Errorf("calls[%d] = %v, want %v", i, s.calls[i], want[i])
		}
	}
	run := syscallRun{wrk: wrkResult{requests: 8690}, sum: s}
	if got := run.perRequest(s.total); got < 4.23 || got > 4.24 {
		t.Errorf("per request %.3f, want 4.238", got)
	}
}

func TestParseStraceSummaryEmpty(t *testing.T) {
	// What strace writes when the tracees made no call at all.
	if _, err := parseStraceSummary(""); err == nil {
		t.Error("no error for an empty summary")
	}
}

func TestSlug(t *testing.T) {
	if got := slug("baton (epoll)"); got != "baton--epoll" {
		t.Errorf("slug = %q", got)
	}
}
