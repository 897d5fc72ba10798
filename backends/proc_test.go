package backends

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// TestCheckPIDFileNotRunning: a missing or empty PID file, or one naming
// a process that has exited, is ErrNotRunning (the server is down: `baton
// check` warns); garbage or a live process that is not the server is not
// (the configuration or the file is wrong: `baton check` fails).
func TestCheckPIDFileNotRunning(t *testing.T) {
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleep.Process.Kill(); sleep.Wait() })
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content string
		missing       bool
		notRunning    bool
	}{
		{"missing", "", true, true},
		{"empty", "\n", false, true},
		{"dead process", strconv.Itoa(dead.Process.Pid) + "\n", false, true},
		{"garbage", "apache2\n", false, false},
		{"a live process that is not the server", strconv.Itoa(sleep.Process.Pid) + "\n", false, false},
		{"this process", strconv.Itoa(os.Getpid()) + "\n", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name+".pid")
			if !tc.missing {
				if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			c := Config{Name: "web", URL: "http://127.0.0.1:1", Kind: KindLighttpd, PIDFile: path}
			_, err := CheckPIDFile(c)
			if err == nil {
				t.Fatal("CheckPIDFile: no error")
			}
			if g, e := errors.Is(err, ErrNotRunning), tc.notRunning; g != e {
				t.Errorf("errors.Is(%q, ErrNotRunning) = %v, want %v", err, g, e)
			}
		})
	}
}
