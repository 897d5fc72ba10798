package fleet

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain doubles as a member in a process of its own (FLEET_HELPER set),
// so that a test can kill -9 a member as a crash would.
func TestMain(m *testing.M) {
	if role := os.Getenv("FLEET_HELPER"); role != "" {
		os.Exit(helperMain(role))
	}
	os.Exit(m.Run())
}

// helperMain joins the fleet as FLEET_NAME on FLEET_ETCD and, for role
// "restart", runs a fleet restart of "web" whose restart never returns;
// for "hold", it just stays. It says what it does on stdout.
func helperMain(role string) int {
	cfg := Config{Etcd: strings.Split(os.Getenv("FLEET_ETCD"), ","), Name: os.Getenv("FLEET_NAME"), LeaseTTL: 4 * time.Second, CallTimeout: 2 * time.Second}
	if err := cfg.Normalize(); err != nil {
		fmt.Println("error", err)
		return 1
	}
	e, err := NewEtcd(&cfg)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	f, err := New(e, cfg, Options{Local: newLocal("web"), Generation: 1})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	ctx := context.Background()
	if _, err := f.Sync(ctx); err != nil {
		fmt.Println("error", err)
		return 1
	}
	go f.Run(ctx)
	fmt.Println("joined")
	if role == "restart" {
		_, err := f.RestartEverywhere(ctx, "web", func(ctx context.Context, name string) error {
			fmt.Println("restarting")
			select {}
		}, RestartOptions{})
		fmt.Println("error", err)
		return 1
	}
	select {}
}

// helper is a member in a child process.
type helper struct {
	cmd   *exec.Cmd
	lines chan string
}

// startHelper runs a helper member; Cleanup kills it.
func (c *cluster) startHelper(t *testing.T, name, role string) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FLEET_HELPER="+role, "FLEET_NAME="+name, "FLEET_ETCD="+strings.Join(c.endpoints(), ","))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, lines: make(chan string, 16)}
	go func() {
		defer close(h.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() { h.kill() })
	return h
}

// expect waits for the helper to print want.
func (h *helper) expect(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case l, ok := <-h.lines:
			if !ok {
				t.Fatalf("helper exited before %q", want)
			}
			if l == want {
				return
			}
			if strings.HasPrefix(l, "error") {
				t.Fatalf("helper: %s", l)
			}
		case <-timeout:
			t.Fatalf("helper did not say %q", want)
		}
	}
}

// kill is kill -9, and waits.
func (h *helper) kill() {
	if h.cmd.ProcessState != nil {
		return
	}
	_ = h.cmd.Process.Kill()
	_ = h.cmd.Wait()
}
