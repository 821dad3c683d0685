package network

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/banger-sh/banger/internal/store"
	"github.com/banger-sh/banger/internal/system"
)

// testNS is a named network namespace made for one test (so that ip(8),
// nft(8) and dig(1) can enter it with `ip netns exec`). Everything created
// in it dies with it; the test removes what it made anyway.
type testNS struct {
	Name string
	H    netns.NsHandle
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, netlink, nftables)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun")
	}
}

func newNS(t testing.TB) *testNS {
	t.Helper()
	needRoot(t)
	for _, tool := range []string{"ip", "nft", "dig", "curl"} {
		if _, err := system.LookPath(tool); err != nil {
			t.Fatalf("%v: these tests need iproute2, nftables, dnsutils and curl (scripts/setup-host)", err)
		}
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := "bgtest-" + hex.EncodeToString(b)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	h, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		t.Fatalf("restore netns: %v", serr) // thread stays locked: discarded
	}
	orig.Close()
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatalf("new netns: %v", err)
	}
	ns := &testNS{Name: name, H: h}
	t.Cleanup(func() {
		h.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	lo, err := nh.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := nh.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return ns
}

// exec runs argv inside the namespace and returns its stdout.
func (n *testNS) exec(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := system.Run(context.Background(), append([]string{"ip", "netns", "exec", n.Name}, argv...)...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return string(out)
}

// do runs f in the namespace on a locked thread.
func (n *testNS) do(t testing.TB, f func() error) {
	t.Helper()
	if err := inNS(n.H, f); err != nil {
		t.Fatal(err)
	}
}

func openStore(t testing.TB, path string) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// newManager starts a manager in ns with a store in dir.
func newManager(t testing.TB, ns *testNS, dir string, pool int) (*Manager, *store.Store) {
	t.Helper()
	st := openStore(t, filepath.Join(dir, "state.db"))
	m, err := New(Options{
		Subnet: netip.MustParsePrefix("172.30.0.0/24"),
		Store:  st, Logger: testLogger(t), NetNS: ns.H, PoolSize: pool,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return m, st
}

// teardown removes everything and checks nothing of ours is left.
func teardown(t testing.TB, ns *testNS, m *Manager) {
	t.Helper()
	if err := m.Teardown(context.Background()); err != nil {
		t.Errorf("teardown: %v", err)
	}
	if out := ns.exec(t, "nft", "list", "tables"); strings.TrimSpace(out) != "" {
		t.Errorf("tables left: %s", out)
	}
	if out := ns.exec(t, "ip", "-br", "link"); strings.Contains(out, m.o.TapPrefix) || strings.Contains(out, m.o.BridgeName) {
		t.Errorf("links left:\n%s", out)
	}
}

func nftDump(t testing.TB, ns *testNS, table string) string {
	t.Helper()
	return ns.exec(t, "nft", "list", "table", "inet", table)
}
