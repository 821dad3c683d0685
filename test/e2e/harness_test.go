// Package e2e drives the real banger and bangerd binaries against real
// VMs (QEMU; TCG on hosts without usable KVM). Every test runs under an
// isolated BANGER_HOME, so a user's real banger state is never touched.
//
// The binaries come from $BANGER_TEST_BIN (make test sets it) or are built
// into a temporary directory with `make build`. The guest image is the
// shared test image from internal/image/imagetest (built once per machine
// into $BANGER_TEST_CACHE), imported as "default".
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/image/imagetest"
	"github.com/banger-sh/banger/internal/system"
)

type harness struct {
	home   string
	bin    string
	dns    int    // this harness's DNS port
	bridge string // this harness's bridge
	cfg    string // its config.toml, without the [vm] section
	// baseline is the world after setup (see guard); teardown compares
	// the world with it once every VM is deleted.
	baseline *world
	extraEnv []string // more environment for banger (and the daemon it starts)
}

var harnessSeq int

// isolate writes a config that gives this harness's daemon its own bridge,
// taps, nftables table, subnet and DNS port, so that it never meets a
// user's real banger or another test run on this host.
func (h *harness) isolate() error {
	harnessSeq++
	n := (os.Getpid()*7 + harnessSeq) % 200
	port, err := freeUDPPort()
	if err != nil {
		return err
	}
	h.dns = port
	h.bridge = fmt.Sprintf("bge%d", n)
	h.cfg = fmt.Sprintf("[network]\nsubnet = \"172.31.%d.0/24\"\ndns_port = %d\nbridge = \"bge%d\"\ntap_prefix = \"bge%dt\"\nnft_table = \"banger_e2e_%d\"\n", n, port, n, n, n)
	if err := os.MkdirAll(filepath.Join(h.home, "config"), 0o755); err != nil {
		return err
	}
	return h.writeConfig(0)
}

// writeConfig writes config.toml with vm.spares = spares. Tests run
// without spare clones (a spare is a VMM process and a directory that
// assertNoLeftovers would count), except the tests of spares, which turn
// them on with withSpares.
func (h *harness) writeConfig(spares int) error {
	cfg := h.cfg + fmt.Sprintf("\n[vm]\nspares = %d\n", spares)
	return os.WriteFile(filepath.Join(h.home, "config", "config.toml"), []byte(cfg), 0o644)
}

// withSpares restarts the daemon with spares spare clones; the cleanup
// restarts it with none.
func (h *harness) withSpares(t *testing.T, spares int) {
	t.Helper()
	restart := func(n int) {
		if err := h.writeConfig(n); err != nil {
			t.Fatal(err)
		}
		h.must(t, "daemon", "stop")
		h.must(t, "daemon", "start")
	}
	restart(spares)
	t.Cleanup(func() { restart(0) })
}

func freeUDPPort() (int, error) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port, nil
}

var (
	setupOnce sync.Once
	shared    *harness
	setupErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		if err := shared.teardown(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e teardown: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// env returns the shared harness, setting it up on first use: binaries,
// an isolated home, the test image imported as "default".
func env(t *testing.T) *harness {
	t.Helper()
	if testing.Short() {
		t.Skip("boots real VMs: not run with -short")
	}
	setupOnce.Do(func() {
		h := &harness{}
		if h.home, setupErr = os.MkdirTemp("", "bge2e"); setupErr != nil {
			return
		}
		// Who owns this home: a later run reaps it if this process dies
		// without its teardown (a panicking test ends the binary at once).
		os.WriteFile(filepath.Join(h.home, "owner.pid"), []byte(fmt.Sprint(os.Getpid())), 0o644)
		shared = h
		if setupErr = h.isolate(); setupErr != nil {
			return
		}
		h.bin = os.Getenv("BANGER_TEST_BIN")
		defer reapStale(h)
		if h.bin == "" {
			h.bin = filepath.Join(h.home, "bin")
			root, _ := filepath.Abs("../..")
			if _, err := system.RunOpts(context.Background(), system.Opts{Dir: root}, "make", "build", "BIN="+h.bin); err != nil {
				setupErr = err
				return
			}
		}
		img := imagetest.TestImage(t)
		out, code := h.run(t, nil, "image", "import", "default",
			"--kernel", filepath.Join(img, "vmlinux"), "--rootfs", filepath.Join(img, "rootfs.ext4"), "--modules", filepath.Join(img, "modules"))
		if code != 0 {
			setupErr = fmt.Errorf("image import: exit %d: %s", code, out.stderr)
			return
		}
		h.baseline, setupErr = h.snapshot()
	})
	if setupErr != nil {
		t.Fatalf("e2e setup: %v", setupErr)
	}
	shared.guard(t)
	return shared
}

func (h *harness) environ() []string {
	return append([]string{"BANGER_HOME=" + h.home, "BANGER_BANGERD=" + filepath.Join(h.bin, "bangerd")}, h.extraEnv...)
}

type result struct {
	stdout, stderr string
}

// run runs banger with args and returns its output and exit code.
func (h *harness) run(t *testing.T, stdin io.Reader, args ...string) (result, int) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	_, err := system.RunOpts(ctx, system.Opts{Env: h.environ(), Stdin: stdin, Stdout: &out, Stderr: &errb},
		append([]string{filepath.Join(h.bin, "banger")}, args...)...)
	code := 0
	if err != nil {
		code = system.ExitCode(err)
		if code < 0 {
			t.Fatalf("banger %v: %v", args, err)
		}
	}
	return result{out.String(), errb.String()}, code
}

// must runs banger and fails the test unless it exits 0.
func (h *harness) must(t *testing.T, args ...string) string {
	t.Helper()
	r, code := h.run(t, nil, args...)
	if code != 0 {
		t.Fatalf("banger %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, r.stdout, r.stderr)
	}
	return r.stdout
}

// start starts banger in the background (for signal tests).
func (h *harness) start(t *testing.T, stdout, stderr io.Writer, args ...string) *system.Process {
	t.Helper()
	p, err := system.Start(system.Opts{Env: h.environ(), Stdout: stdout, Stderr: stderr},
		append([]string{filepath.Join(h.bin, "banger")}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// vmmProcs lists live processes whose command line mentions this
// harness's home: the VMMs it started (and its daemon).
func (h *harness) vmmProcs() []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(h.home)) {
			continue
		}
		if bytes.Contains(b, []byte("qemu")) {
			out = append(out, e.Name()+": "+string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))[:80])
		}
	}
	return out
}

// assertNoLeftovers checks that no VM other than the ones named in keep
// exists, and that every VM directory, runtime directory and VMM process
// of this harness belongs to a kept VM: a state directory per kept VM, a
// runtime directory and exactly one VMM process per running kept VM, and
// nothing else. The VMs that tests share (longLivedVMs) are always kept.
func (h *harness) assertNoLeftovers(t *testing.T, keep ...string) {
	t.Helper()
	keep = append(keep, longLivedVMs...)
	var vms []api.VM
	if err := json.Unmarshal([]byte(h.must(t, "vm", "ls", "--json")), &vms); err != nil {
		t.Fatalf("vm ls --json: %v", err)
	}
	kept := map[string]api.VM{} // id → VM
	var extra []string
	for _, v := range vms {
		if slices.Contains(keep, v.Name) {
			kept[v.ID] = v
		} else {
			extra = append(extra, v.Name+" ("+v.State+")")
		}
	}
	if len(extra) > 0 {
		t.Errorf("VMs left behind: %v", extra)
	}
	check := func(dir string, want func(api.VM) bool) {
		ents, _ := os.ReadDir(dir)
		seen := map[string]bool{}
		for _, e := range ents {
			seen[e.Name()] = true
			if v, ok := kept[e.Name()]; !ok || !want(v) {
				t.Errorf("left behind: %s", filepath.Join(dir, e.Name()))
			}
		}
		for id, v := range kept {
			if want(v) && !seen[id] {
				t.Errorf("vm %s (%s, %s): %s missing", v.Name, id, v.State, filepath.Join(dir, id))
			}
		}
	}
	running := func(v api.VM) bool { return v.State == "running" }
	if ups, _ := os.ReadDir(filepath.Join(h.home, "state", "uploads")); len(ups) > 0 {
		t.Errorf("uploaded work disks left behind: %d in %s", len(ups), filepath.Join(h.home, "state", "uploads"))
	}
	check(filepath.Join(h.home, "state", "vms"), func(api.VM) bool { return true })
	check(filepath.Join(h.home, "run", "vm"), running)
	procs := map[string][]int{} // VM id → VMM pids
	for _, p := range h.vmmProcs() {
		if strings.Contains(p, "banger-tpl-") {
			continue // a warm-start template being built in the background (teardown checks it is gone)
		}
		var pid int
		fmt.Sscanf(p, "%d:", &pid)
		id := h.vmmID(pid)
		if v, ok := kept[id]; !ok || !running(v) {
			t.Errorf("VMM process left: %s", p)
			continue
		}
		procs[id] = append(procs[id], pid)
	}
	for id, v := range kept {
		switch {
		case running(v) && (len(procs[id]) != 1 || procs[id][0] != v.PID):
			t.Errorf("vm %s is running with pid %d, but its VMM processes are %v", v.Name, v.PID, procs[id])
		case !running(v) && v.State != "unknown" && len(procs[id]) > 0:
			t.Errorf("vm %s is %s, but VMM processes %v run", v.Name, v.State, procs[id])
		}
	}
}

// longLivedVMs are the names of the VMs that tests share and leave
// running for later tests.
var longLivedVMs = []string{"shared", "lc"}

// vmmID returns the VM id in a VMM process's command line (the directory
// under run/vm/ that its sockets live in), or "".
func (h *harness) vmmID(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	prefix := []byte(filepath.Join(h.home, "run", "vm") + "/")
	i := bytes.Index(b, prefix)
	if i < 0 {
		return ""
	}
	rest := b[i+len(prefix):]
	if j := bytes.IndexByte(rest, '/'); j > 0 {
		return string(rest[:j])
	}
	return ""
}

// teardown deletes every VM, stops the daemon and reports anything left
// behind (VMM processes, the bridge).
func (h *harness) teardown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := system.Opts{Env: h.environ()}
	banger := filepath.Join(h.bin, "banger")
	if out, err := system.RunOpts(ctx, env, banger, "vm", "ls", "-q"); err == nil {
		for _, n := range strings.Fields(string(out)) {
			system.RunOpts(ctx, env, banger, "vm", "delete", "--force", n)
		}
	}
	// The end of the shared fixture: with every VM deleted, nothing but
	// what setup made may remain.
	var leaks []string
	if h.baseline != nil {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(250 * time.Millisecond) {
			now, err := h.snapshot()
			if err != nil {
				leaks = append(leaks, "leak checker: "+err.Error())
				break
			}
			if l := leftovers(h.baseline, now, nil); len(l) == 0 || time.Now().After(deadline) {
				leaks = append(leaks, l...)
				break
			}
		}
	}
	system.RunOpts(ctx, env, banger, "daemon", "stop")
	// Nothing this run started may outlive it: report, then kill.
	if h.baseline != nil {
		if now, err := h.snapshot(); err == nil {
			for n := range now.links {
				leaks = append(leaks, "tap "+n+" after the daemon stopped")
			}
			for c := range now.chains {
				leaks = append(leaks, "nft chain "+c+" after the daemon stopped")
			}
		}
	}
	for _, p := range h.vmmProcs() {
		leaks = append(leaks, "process "+p)
		var pid int
		fmt.Sscanf(p, "%d:", &pid)
		if pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if h.bridge != "" {
		if _, err := net.InterfaceByName(h.bridge); err == nil {
			leaks = append(leaks, "bridge "+h.bridge+" still exists after the daemon stopped with no VM")
		}
	}
	os.RemoveAll(h.home)
	return errors.Join(func() []error {
		var errs []error
		for _, l := range leaks {
			errs = append(errs, errors.New("leaked: "+l))
		}
		return errs
	}()...)
}

var _ = errors.New

// reapStale tears down the homes of earlier e2e runs whose process died
// without a teardown (their daemon, VMs, bridge), as teardown would.
func reapStale(h *harness) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "bge2e*"))
	for _, d := range dirs {
		if d == h.home {
			continue
		}
		b, err := os.ReadFile(filepath.Join(d, "owner.pid"))
		if err != nil {
			continue // not ours to judge (an older harness, or being set up)
		}
		var pid int
		fmt.Sscan(string(b), &pid)
		if pid > 0 && syscall.Kill(pid, 0) == nil {
			continue // alive
		}
		old := &harness{home: d, bin: h.bin}
		if err := old.teardown(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: reaped the home of a dead run %s: %v\n", d, err)
		}
	}
}

func exitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	return system.ExitCode(err)
}

// assertOnlyVMTaps checks that the taps of this harness are those of the
// named VMs plus at most the daemon's pool of spare taps (2).
func (h *harness) assertOnlyVMTaps(t *testing.T, vms ...string) {
	t.Helper()
	own := map[string]bool{}
	for _, n := range append(vms, longLivedVMs...) {
		if v, ok := showVM(t, h, n); ok && v.Tap != "" {
			own[v.Tap] = true
		}
	}
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var others []string
	for _, i := range ifs {
		if strings.HasPrefix(i.Name, h.bridge+"t") && !own[i.Name] {
			others = append(others, i.Name)
		}
	}
	if len(others) > 2 {
		t.Errorf("taps beyond the VMs' and the pool of 2: %v", others)
	}
}
