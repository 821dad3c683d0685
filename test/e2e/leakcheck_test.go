package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/system"
	"github.com/vishvananda/netlink"
)

// TestLeftoversNamesEachKind is the leak checker's logic on made-up
// worlds: each kind of leftover is named, what a kept VM owns and what was
// there before are not.
func TestLeftoversNamesEachKind(t *testing.T) {
	before := &world{links: map[string]bool{"bge1t0": true}, chains: map[string]bool{"inet t/input": true},
		rules: map[string]string{}, files: map[string]bool{"state/vms/k/root.qcow2": true},
		procs: map[int]string{}, vms: map[string][2]string{"k": {"shared", "running"}},
		leases: map[string]string{"k": "a bge1t0 m"}, taps: map[string]string{"bge1t0": "k"},
		runs: map[string]string{}, images: map[string]string{"i": "default"}}
	after := &world{
		links:  map[string]bool{"bge1t0": true, "bge1t1": true, "bge1t2": true, "bge1t3": true, "bge1t4": true, "bge1t5": true},
		chains: map[string]bool{"inet t/input": true, "inet t/extra": true},
		rules:  map[string]string{"inet t/egress rule vm=k #0": "k", "inet t/egress rule vm=gone #0": "gone", "inet t/egress rule vm=x #0": "x"},
		files: map[string]bool{"state/vms/k/root.qcow2": true, "state/vms/k/console.log": true, "state/vms/x/root.qcow2": true,
			"run/vm/x/qmp.sock": true, "cache/tmp/half": true, "state/runs/r1/patch": true, "state/runs/r9/patch": true},
		procs:  map[int]string{10: "qemu-system-x86_64 -qmp unix:/h/run/vm/k/qmp.sock", 11: "qemu-system-x86_64 -qmp unix:/h/run/vm/x/qmp.sock", 12: "/h/bin/bangerd"},
		vms:    map[string][2]string{"k": {"shared", "running"}, "x": {"tmp", "stopped"}},
		leases: map[string]string{"k": "a bge1t0 m", "x": "b bge1t1 n", "gone": "c bge1t2 o"},
		taps:   map[string]string{"bge1t0": "k", "bge1t1": "x", "bge1t2": "gone"},
		runs:   map[string]string{"r1": "done", "r2": "running"},
		images: map[string]string{"i": "default", "j": "half"},
	}
	got := leftovers(before, after, []string{"shared"})
	want := []string{
		"file cache/tmp/half",
		"file run/vm/x/qmp.sock",
		"file state/runs/r9/patch",
		"file state/vms/x/root.qcow2",
		"link bge1t1 (the tap of vm x)",
		"link bge1t2 (the tap of vm gone)",
		"link bge1t3 (a tap without a lease, beyond the pool of 2)",
		"link bge1t4 (a tap without a lease, beyond the pool of 2)",
		"link bge1t5 (a tap without a lease, beyond the pool of 2)",
		"nft chain inet t/extra",
		"nft inet t/egress rule vm=gone #0",
		"nft inet t/egress rule vm=x #0",
		"process 11: qemu-system-x86_64 -qmp unix:/h/run/vm/x/qmp.sock",
		"store row: image half (j)",
		"store row: lease of vm gone: c bge1t2 o",
		"store row: lease of vm x: b bge1t1 n",
		"store row: run r2 still running",
		"store row: vm tmp (x, stopped)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("leftovers:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := leftovers(after, after, nil); len(got) != 0 {
		t.Errorf("a world against itself: %v", got)
	}
}

// TestLeakCheckerSeesRealLeftovers plants a file, a tap-named link and a
// process naming the home in the real world of the harness: the snapshot
// must see each, and the world must be clean again once they are gone.
func TestLeakCheckerSeesRealLeftovers(t *testing.T) {
	h := env(t)
	start := time.Now()
	before, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("one snapshot of the world: %s (a guarded test takes two)", time.Since(start).Round(time.Millisecond))
	dir := filepath.Join(h.home, "cache", "tmp")
	os.MkdirAll(dir, 0o755)
	file := filepath.Join(dir, "leakcheck")
	os.WriteFile(file, []byte("x"), 0o644)
	defer os.Remove(file)
	tap := h.bridge + "tleak"
	link := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: tap}, Mode: netlink.TUNTAP_MODE_TAP}
	if err := netlink.LinkAdd(link); err != nil {
		t.Fatal(err)
	}
	defer netlink.LinkDel(link)
	sleeper := filepath.Join(dir, "sleep")
	bin, err := system.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	os.Symlink(bin, sleeper)
	defer os.Remove(sleeper)
	p, err := system.Start(system.Opts{}, sleeper, "600")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Wait()
	defer p.Signal(syscall.SIGKILL)
	time.Sleep(100 * time.Millisecond) // exec done: the cmdline is the sleeper's
	after, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(leftovers(before, after, longLivedVMs), "\n")
	for _, w := range []string{"file cache/tmp/leakcheck", "link " + tap, "process ", sleeper + " 600"} {
		if !strings.Contains(got, w) {
			t.Errorf("leak checker did not name %q; it named:\n%s", w, got)
		}
	}
}
