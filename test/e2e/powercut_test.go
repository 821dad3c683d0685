package e2e

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/crashpoint"
	"github.com/banger-sh/banger/internal/image/imagetest"
	"github.com/banger-sh/banger/internal/network"
)

// TestPowerCut plays a host reboot on a banger home of its own: every
// process it started killed at once (one VM running, one stopped, one
// being created), its runtime dir wiped, its bridge, taps and nftables
// tables gone, and a new boot id (BANGER_TEST_BOOT_ID). The next daemon
// must show no phantom running VM, recreate the bridge, free the lease of
// the VM caught mid-create, and start every stopped VM again. A VM of the
// shared home (another banger on the host) runs on.
func TestPowerCut(t *testing.T) {
	base, other := sharedVM(t)
	otherPID := vmInfo(t, base, other).PID
	home, err := os.MkdirTemp("", "bgpower")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{home: home, bin: base.bin}
	defer func() {
		if err := h.teardown(); err != nil {
			t.Error(err)
		}
	}()
	if err := h.isolate(); err != nil {
		t.Fatal(err)
	}
	img := imagetest.TestImage(t)
	h.must(t, "image", "import", "default", "--kernel", filepath.Join(img, "vmlinux"), "--rootfs", filepath.Join(img, "rootfs.ext4"), "--modules", filepath.Join(img, "modules"))
	if h.baseline, err = h.snapshot(); err != nil {
		t.Fatal(err)
	}
	create := append([]string{"vm", "create"}, cheapVM...)
	h.must(t, append(create, "pc-run")...)
	h.must(t, append(create, "pc-stop")...)
	h.must(t, "vm", "stop", "pc-stop")
	mid := h.start(t, nil, nil, append(create, "pc-mid")...)
	defer mid.Wait()
	// Cut when pc-mid holds a lease and a tap and boots.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		w, err := h.snapshot()
		if err != nil {
			t.Fatal(err)
		}
		if id := vmIDByName(w, "pc-mid"); id != "" && w.leases[id] != "" && w.vms[id][1] == "creating" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pc-mid never got a lease in state creating")
		}
	}
	cut := time.Now()
	powerCut(t, h)
	mid.Wait()

	// The new boot.
	h.extraEnv = []string{crashpoint.BootIDEnv + "=" + newUUID()}
	restart := time.Now()
	h.must(t, "daemon", "start")
	var vms []api.VM
	if err := json.Unmarshal([]byte(h.must(t, "vm", "ls", "--json")), &vms); err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, v := range vms {
		states[v.Name] = v.State
		t.Logf("after the reboot: vm %s %s %q", v.Name, v.State, v.LastError)
	}
	// The VM that ran is stopped, or in error with the reason (its VMM
	// died under it); never running.
	if len(states) != 2 || (states["pc-run"] != "stopped" && states["pc-run"] != "error") || states["pc-stop"] != "stopped" {
		t.Errorf("after the reboot: %v, want pc-run and pc-stop stopped and pc-mid gone", states)
	}
	if _, err := netlink.LinkByName(h.bridge); err != nil {
		t.Errorf("bridge %s not recreated: %v", h.bridge, err)
	}
	w, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for id, l := range w.leases {
		if _, ok := w.vms[id]; !ok {
			t.Errorf("stale lease of vm %s not freed: %s", id, l)
		}
	}
	if len(w.procs) != 0 { // no VMM survived the reboot (the daemon does not name the home)
		t.Errorf("processes after the reboot: %v", w.procs)
	}
	addrs := map[string]string{}
	for _, n := range []string{"pc-run", "pc-stop"} {
		h.must(t, "vm", "start", n)
		v := vmInfo(t, h, n)
		if v.State != "running" {
			t.Errorf("vm %s: %s after start", n, v.State)
		}
		if o, dup := addrs[v.IP]; dup {
			t.Errorf("vms %s and %s share address %s", o, n, v.IP)
		}
		addrs[v.IP] = n
		execOut(t, h, n, "true")
	}
	othersRunOn(t, base, other, otherPID)
	for _, n := range []string{"pc-run", "pc-stop"} {
		h.must(t, "vm", "delete", "--force", n)
	}
	t.Logf("power cut: %.1f s from the cut to the daemon serving; both VMs started again %.1f s later",
		restart.Sub(cut).Seconds(), time.Since(restart).Seconds())
}

func vmIDByName(w *world, name string) string {
	for id, v := range w.vms {
		if v[0] == name {
			return id
		}
	}
	return ""
}

// powerCut kills every process of h's home at once (daemon and VMMs),
// then removes what a reboot removes: the runtime dir, the bridge and
// taps, the nftables tables.
func powerCut(t *testing.T, h *harness) {
	t.Helper()
	pids := []int{daemonPID(t, h)}
	w, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for pid := range w.procs {
		pids = append(pids, pid)
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range pids {
		waitReaped(t, pid)
	}
	if err := os.RemoveAll(filepath.Join(h.home, "run")); err != nil {
		t.Fatal(err)
	}
	links, err := network.ListLinks()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if n := l.Attrs().Name; n == h.bridge || strings.HasPrefix(n, h.bridge+"t") {
			if err := netlink.LinkDel(l); err != nil {
				t.Fatalf("delete %s: %v", n, err)
			}
		}
	}
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []nftables.TableFamily{nftables.TableFamilyINet, nftables.TableFamilyBridge} {
		c.DelTable(&nftables.Table{Name: h.nftTable(), Family: f})
		if err := c.Flush(); err != nil && !strings.Contains(err.Error(), "no such file") {
			t.Logf("delete nft table %s (family %d): %v", h.nftTable(), f, err)
		}
	}
}

func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
