package fleet

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/batonproxy/baton/internal/tlstest"
)

// etcdBinary is the etcd server the tests run: $BATON_ETCD, or etcd on
// PATH (Debian's etcd-server). Missing, the tests skip, or fail under
// CI=true.
func etcdBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("BATON_ETCD"); p != "" {
		return p
	}
	p, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("etcd not installed (apt-get install etcd-server): %v", err)
		}
		t.Skipf("etcd not installed: %v", err)
	}
	return p
}

// cluster is a real etcd cluster of loopback members, each on an address
// of its own in 127.0.0.0/8 (picked at random, so that parallel test runs
// do not meet) with the standard ports.
type cluster struct {
	t       *testing.T
	bin     string
	dir     string
	members []*etcdMember
	tls     *clusterTLS
}

type clusterTLS struct {
	ca                    *tlstest.CA
	certFile, keyFile     string // server
	caFile                string
	clientCert, clientKey string
}

type etcdMember struct {
	name, ip string
	cmd      *exec.Cmd
	done     chan struct{}
}

func (m *etcdMember) clientURL(scheme string) string { return scheme + "://" + m.ip + ":2379" }
func (m *etcdMember) peerURL() string                { return "http://" + m.ip + ":2380" }

// startCluster starts n members and waits until they serve; Cleanup
// stops them.
func startCluster(t *testing.T, n int, withTLS bool) *cluster {
	t.Helper()
	bin := etcdBinary(t)
	for attempt := 0; ; attempt++ {
		c := &cluster{t: t, bin: bin, dir: t.TempDir()}
		base := fmt.Sprintf("127.%d.%d.", 64+rand.IntN(180), rand.IntN(256))
		var initial []string
		for i := range n {
			m := &etcdMember{name: fmt.Sprintf("e%d", i), ip: fmt.Sprintf("%s%d", base, 10+i)}
			c.members = append(c.members, m)
			initial = append(initial, m.name+"="+m.peerURL())
		}
		if withTLS {
			c.makeTLS()
		}
		for i := range c.members {
			c.start(i, strings.Join(initial, ","))
		}
		t.Cleanup(c.stopAll)
		if err := c.waitServing(20 * time.Second); err == nil {
			return c
		} else if attempt == 2 {
			t.Fatalf("etcd cluster did not start: %v\n%s", err, c.logs())
		}
		c.stopAll() // an address in use? another one
	}
}

func (c *cluster) makeTLS() {
	c.tls = &clusterTLS{ca: tlstest.NewCA(c.t)}
	c.tls.caFile = filepath.Join(c.dir, "ca.crt")
	if err := os.WriteFile(c.tls.caFile, c.tls.ca.CertPEM, 0o644); err != nil {
		c.t.Fatal(err)
	}
	var names []string
	for _, m := range c.members {
		names = append(names, m.ip)
	}
	c.tls.certFile, c.tls.keyFile = c.tls.ca.Issue(c.t, time.Time{}, time.Time{}, names...).Write(c.t, c.dir, "server")
	c.tls.clientCert, c.tls.clientKey = c.tls.ca.IssueClient(c.t, "baton").Write(c.t, c.dir, "client")
}

func (c *cluster) scheme() string {
	if c.tls != nil {
		return "https"
	}
	return "http"
}

// start runs member i; initial is the initial cluster (ignored by etcd
// when the member's data directory exists: a restart).
func (c *cluster) start(i int, initial string) {
	c.t.Helper()
	m := c.members[i]
	if initial == "" {
		var parts []string
		for _, o := range c.members {
			parts = append(parts, o.name+"="+o.peerURL())
		}
		initial = strings.Join(parts, ",")
	}
	args := []string{
		"--name", m.name,
		"--data-dir", filepath.Join(c.dir, m.name+".data"),
		"--listen-client-urls", m.clientURL(c.scheme()),
		"--advertise-client-urls", m.clientURL(c.scheme()),
		"--listen-peer-urls", m.peerURL(),
		"--initial-advertise-peer-urls", m.peerURL(),
		"--initial-cluster", initial,
		"--initial-cluster-token", filepath.Base(c.dir),
		"--initial-cluster-state", "new",
		// why: the data dies with the test; fsync on a shared machine
		// only slows every request down.
		"--unsafe-no-fsync",
		"--heartbeat-interval", "50",
		"--election-timeout", "500",
		"--logger", "zap",
		"--log-level", "error",
		"--log-outputs", filepath.Join(c.dir, m.name+".log"),
	}
	if c.tls != nil {
		args = append(args, "--cert-file", c.tls.certFile, "--key-file", c.tls.keyFile,
			"--trusted-ca-file", c.tls.caFile, "--client-cert-auth")
	}
	cmd := exec.Command(c.bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start etcd: %v", err)
	}
	m.cmd, m.done = cmd, make(chan struct{})
	go func(done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(m.done)
}

// stop ends member i with sig and waits for it.
func (c *cluster) stop(i int, sig syscall.Signal) {
	m := c.members[i]
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(sig)
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.done
	}
	m.cmd = nil
}

func (c *cluster) stopAll() {
	for i := range c.members {
		c.stop(i, syscall.SIGTERM)
	}
	if c.t.Failed() {
		c.t.Logf("etcd logs:\n%s", c.logs())
	}
}

func (c *cluster) logs() string {
	var b strings.Builder
	for _, m := range c.members {
		f, err := os.Open(filepath.Join(c.dir, m.name+".log"))
		if err != nil {
			continue
		}
		var lines []string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		f.Close()
		fmt.Fprintf(&b, "--- %s\n%s\n", m.name, strings.Join(lines[max(0, len(lines)-15):], "\n"))
	}
	return b.String()
}

func (c *cluster) endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.clientURL(c.scheme()))
	}
	return eps
}

// config is a member's fleet configuration on this cluster.
func (c *cluster) config(name string) Config {
	// why: short enough that expiry tests are quick, long enough that a
	// loaded machine (-race, other tests) renews in time.
	cfg := Config{Etcd: c.endpoints(), Name: name, LeaseTTL: 4 * time.Second, CallTimeout: 2 * time.Second}
	if c.tls != nil {
		cfg.CAFile, cfg.CertFile, cfg.KeyFile = c.tls.caFile, c.tls.clientCert, c.tls.clientKey
	}
	if err := cfg.Normalize(); err != nil {
		c.t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		c.t.Fatal(err)
	}
	return cfg
}

// client is a raw etcd client for the test's own checks.
func (c *cluster) client() *clientv3.Client {
	c.t.Helper()
	cfg := c.config("test")
	cc := clientv3.Config{Endpoints: cfg.Etcd, Logger: zap.NewNop(), DialTimeout: 2 * time.Second}
	if c.tls != nil {
		tc, err := cfg.tlsConfig()
		if err != nil {
			c.t.Fatal(err)
		}
		cc.TLS = tc
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cli.Close() })
	return cli
}

// waitServing waits until every running member answers a linearizable
// read.
func (c *cluster) waitServing(d time.Duration) error {
	deadline := time.Now().Add(d)
	cli := c.client()
	var err error
	for time.Now().Before(deadline) {
		err = nil
		for _, m := range c.members {
			if m.cmd == nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, e := cli.Status(ctx, m.clientURL(c.scheme()))
			if e == nil {
				_, e = cli.Get(ctx, "health")
			}
			cancel()
			if e != nil {
				err = fmt.Errorf("%s: %w", m.name, e)
			}
		}
		if err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

// leader is the index of the member that leads now.
func (c *cluster) leader() int {
	c.t.Helper()
	cli := c.client()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for i, m := range c.members {
			if m.cmd == nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := cli.Status(ctx, m.clientURL(c.scheme()))
			cancel()
			if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
				return i
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatal("no etcd leader")
	return -1
}

// serverVersion is what the first member says it runs.
func (c *cluster) serverVersion() string {
	cli := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := cli.Status(ctx, c.endpoints()[0])
	if err != nil {
		c.t.Fatal(err)
	}
	return st.Version
}

func TestEtcdCluster(t *testing.T) {
	c := startCluster(t, 3, false)
	t.Logf("etcd server %s", c.serverVersion())
	if l := c.leader(); l < 0 || l > 2 {
		t.Fatalf("leader %d", l)
	}
}
