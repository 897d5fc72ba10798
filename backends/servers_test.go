package backends

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
)

// waitFor polls cond every 5 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := poll(ctx, cond); err != nil {
		t.Fatalf("%s: not within %s", what, d)
	}
}

func kinds() []Kind { return []Kind{KindApache, KindLighttpd} }

func backendKind(k Kind) string {
	if k == KindApache {
		return backendtest.Apache
	}
	return backendtest.Lighttpd
}

// slowGet starts GET /cgi-bin/slow.sh?secs and reports status, body length
// and error on the returned channel.
func slowGet(url string, secs int) <-chan string {
	out := make(chan string, 1)
	go func() {
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
		resp, err := c.Get(fmt.Sprintf("%s/cgi-bin/slow.sh?%d", url, secs))
		if err != nil {
			out <- "error: " + err.Error()
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		out <- fmt.Sprintf("%d %d %v", resp.StatusCode, len(b), err)
	}()
	return out
}

// TestServerFacts checks every entry of the facts table against the real
// servers: what baton's restart code relies on must be true of them.
func TestServerFacts(t *testing.T) {
	for _, k := range kinds() {
		t.Run(string(k), func(t *testing.T) {
			t.Parallel()
			facts, _ := Facts(k)
			backendtest.Require(t, backendKind(k))

			t.Run("GracefulRestart", func(t *testing.T) {
				s := backendtest.StartT(t, backendKind(k), backendtest.Options{})
				pid, _ := s.PID()
				gen, err := s.Generation()
				if err != nil {
					t.Fatal(err)
				}
				before, _ := children(pid)
				idle := (&Backend{cfg: Config{HealthPath: "/", HealthTimeout: 5 * time.Second}, addr: strings.TrimPrefix(s.URL, "http://")}).openSentinel(context.Background())
				if facts.ClosesIdleOnGraceful && idle == nil {
					t.Fatal("could not leave a keep-alive connection idle on the server")
				}
				if err := syscall.Kill(pid, facts.GracefulRestart); err != nil {
					t.Fatal(err)
				}
				if idle != nil {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					err := idle.waitClosed(ctx)
					cancel()
					if got, want := err == nil, facts.ClosesIdleOnGraceful; got != want {
						t.Errorf("idle keep-alive connection closed by %s: got %v (%v), want %v", sigName(facts.GracefulRestart), got, err, want)
					}
				}
				waitFor(t, 10*time.Second, "generation to increase", func() bool {
					g, err := s.Generation()
					return err == nil && g > gen
				})
				after, _ := s.PID()
				if got, want := after == pid, facts.SamePIDAfterGraceful; got != want {
					t.Errorf("same PID after %s: got %v, want %v (pid %d -> %d)", sigName(facts.GracefulRestart), got, want, pid, after)
				}
				if facts.NewChildrenAfterGraceful {
					waitFor(t, 10*time.Second, "a child that was not there before", func() bool {
						now, _ := children(pid)
						for c := range now {
							if !before[c] {
								return true
							}
						}
						return false
					})
				}
			})

			t.Run("GracefulStop", func(t *testing.T) {
				s := backendtest.StartT(t, backendKind(k), backendtest.Options{})
				pid, _ := s.PID()
				slow := slowGet(s.URL, 2)
				// The request must be in the server before the signal.
				waitFor(t, 5*time.Second, "the slow CGI to start", func() bool {
					return cgiRunning(s.Dir)
				})
				if err := syscall.Kill(pid, facts.GracefulStop); err != nil {
					t.Fatal(err)
				}
				if facts.PIDFileRemovedOnStop {
					waitFor(t, time.Second, "the PID file to go", func() bool {
						_, err := os.Stat(s.PIDFile)
						return os.IsNotExist(err)
					})
				}
				if got, want := <-slow, "200 4096 <nil>"; got != want {
					t.Errorf("in-flight request during %s: got %q, want %q", sigName(facts.GracefulStop), got, want)
				}
				waitFor(t, 10*time.Second, "the server to exit", func() bool { return !alive(pid) })
			})

			t.Run("ForegroundAndConfigTest", func(t *testing.T) {
				s := backendtest.StartT(t, backendKind(k), backendtest.Options{})
				if err := s.Stop(); err != nil {
					t.Fatal(err)
				}
				test := exec.Command(s.Binary, append([]string{"-f", s.Conf}, facts.ConfigTest...)...)
				if out, err := test.CombinedOutput(); err != nil {
					t.Fatalf("%v on a good config: %v: %s", facts.ConfigTest, err, out)
				}
				cmd := exec.Command(s.Binary, append([]string{"-f", s.Conf}, facts.Foreground...)...)
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				exited := make(chan error, 1)
				go func() { exited <- cmd.Wait() }()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := s.WaitHealthy(ctx); err != nil {
					t.Fatal(err)
				}
				if pid, _ := s.PID(); pid != cmd.Process.Pid {
					t.Errorf("with %v the PID file names %d, want the process we started, %d", facts.Foreground, pid, cmd.Process.Pid)
				}
				select {
				case err := <-exited:
					t.Fatalf("with %v the server returned (%v): it daemonized", facts.Foreground, err)
				default:
				}
				_ = cmd.Process.Signal(syscall.SIGTERM)
				<-exited

				f, err := os.OpenFile(s.Conf, os.O_APPEND|os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintln(f, "this is not a directive")
				f.Close()
				if out, err := exec.Command(s.Binary, append([]string{"-f", s.Conf}, facts.ConfigTest...)...).CombinedOutput(); err == nil {
					t.Errorf("%v accepted a broken config: %s", facts.ConfigTest, out)
				}
			})

			t.Run("SecondStart", func(t *testing.T) {
				s := backendtest.StartT(t, backendKind(k), backendtest.Options{})
				pid, _ := s.PID()
				out, err := exec.Command(s.StartCommand[0], s.StartCommand[1:]...).CombinedOutput()
				after, rerr := s.PID()
				if facts.StartTruncatesPIDFile {
					if err == nil {
						t.Errorf("a second start while running succeeded: %s", out)
					}
					if rerr == nil && after == pid {
						t.Errorf("a failed second start left the PID file intact (%d); the fact says it truncates it", after)
					}
				} else if rerr != nil || after != pid {
					t.Errorf("a second start changed the PID file: %d -> %d (%v); output %s", pid, after, rerr, out)
				}
				if !alive(pid) {
					t.Errorf("a second start killed the running server")
				}
			})

			if facts.StartMayFindPortBusy {
				t.Run("StartOnBusyPortFailsCleanly", func(t *testing.T) {
					s := backendtest.StartT(t, backendKind(k), backendtest.Options{})
					if err := s.Stop(); err != nil {
						t.Fatal(err)
					}
					ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port))
					if err != nil {
						t.Fatal(err)
					}
					defer ln.Close()
					out, err := exec.Command(s.StartCommand[0], s.StartCommand[1:]...).CombinedOutput()
					if err == nil {
						t.Fatalf("start on a busy port succeeded: %s", out)
					}
					if !strings.Contains(strings.ToLower(string(out)), "address already in use") {
						t.Errorf("start on a busy port: output %q does not say the address is in use", out)
					}
					if len(s.Processes()) != 0 {
						t.Errorf("a failed start left processes %v", s.Processes())
					}
				})
			}
		})
	}
}

// cgiRunning reports whether a slow.sh CGI from dir is running.
func cgiRunning(dir string) bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.Contains(string(b), dir+"/cgi-bin/slow.sh") {
			return true
		}
	}
	return false
}
