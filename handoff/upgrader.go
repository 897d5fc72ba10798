package handoff

import (
	"context"
	"net"
	"os"

	"github.com/cloudflare/tableflip"
)

// upgrader is what Handoff needs of tableflip: the process seam, so the
// upgrade state machine can be tested with a fake next process (as
// tableflip tests its own with a fake process, process_test.go). The real
// one is tableflipUpgrader; handoff_test.go has the fake.
type upgrader interface {
	HasParent() bool
	WaitForParent(ctx context.Context) error
	// Upgrade starts the next process and returns once it is ready (nil)
	// or has failed.
	Upgrade() error
	Ready() error
	Stop()
	Exit() <-chan struct{}
	// release lets the next process upgrade again while this one drains
	// (releaseSuccessor).
	release() error

	Listener(network, addr string) (net.Listener, error)
	ListenWithCallback(network, addr string, f func(network, addr string) (net.Listener, error)) (net.Listener, error)
	File(name string) (*os.File, error)
	AddFile(name string, f *os.File) error
}

// tableflipUpgrader is the upgrader of a real process.
type tableflipUpgrader struct{ *tableflip.Upgrader }

func newTableflipUpgrader(opts Options) (upgrader, error) {
	upg, err := tableflip.New(tableflip.Options{UpgradeTimeout: opts.UpgradeTimeout})
	if err != nil {
		return nil, err
	}
	return tableflipUpgrader{upg}, nil
}

func (u tableflipUpgrader) release() error { return releaseSuccessor(u.Upgrader) }

func (u tableflipUpgrader) Listener(network, addr string) (net.Listener, error) {
	return u.Fds.Listener(network, addr)
}

func (u tableflipUpgrader) ListenWithCallback(network, addr string, f func(network, addr string) (net.Listener, error)) (net.Listener, error) {
	return u.Fds.ListenWithCallback(network, addr, f)
}

func (u tableflipUpgrader) File(name string) (*os.File, error) { return u.Fds.File(name) }

func (u tableflipUpgrader) AddFile(name string, f *os.File) error { return u.Fds.AddFile(name, f) }
