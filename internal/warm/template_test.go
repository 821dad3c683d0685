package warm_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/system"
	"github.com/banger-sh/banger/internal/testhome"
	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/vmm/qemu"
	"github.com/banger-sh/banger/internal/vmm/vmmtest"
	"github.com/banger-sh/banger/internal/warm"
)

func TestShapeKey(t *testing.T) {
	a := warm.Shape{ImageName: "x", ImageDigest: "d", AgentDigest: "a", Backend: "qemu", VMM: "v", VCPUs: 1, MemoryMiB: 256}
	b := a
	b.ImageName = "y"
	if a.Key() != b.Key() {
		t.Error("image name changed the key")
	}
	for name, f := range map[string]func(*warm.Shape){
		"image":  func(s *warm.Shape) { s.ImageDigest = "e" },
		"agent":  func(s *warm.Shape) { s.AgentDigest = "b" },
		"vmm":    func(s *warm.Shape) { s.VMM = "w" },
		"vcpus":  func(s *warm.Shape) { s.VCPUs = 2 },
		"mem":    func(s *warm.Shape) { s.MemoryMiB = 512 },
		"root":   func(s *warm.Shape) { s.RootBytes = 1 << 30 },
		"work":   func(s *warm.Shape) { s.WorkDiskBytes = 1 << 20 },
		"nics":   func(s *warm.Shape) { s.NICs = 1 },
		"kernel": func(s *warm.Shape) { s.KernelArgs = []string{"quiet"} },
	} {
		c := a
		f(&c)
		if c.Key() == a.Key() {
			t.Errorf("%s did not change the key", name)
		}
	}
	if len(a.Key()) != 32 {
		t.Errorf("key %q", a.Key())
	}
}

func TestLookupMissing(t *testing.T) {
	s := warm.NewStore(layout(t), qemu.New(), warm.StoreOptions{})
	if _, ok := s.Lookup(strings.Repeat("a", 32)); ok {
		t.Error("found a template in an empty store")
	}
	if _, ok := s.Lookup("../etc"); ok {
		t.Error("bad key accepted")
	}
	if err := s.Remove("../x"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Remove bad key: %v", err)
	}
	if l, err := s.List(); err != nil || len(l) != 0 {
		t.Errorf("List = %v, %v", l, err)
	}
	if _, err := s.Build(context.Background(), warm.Shape{}, warm.Source{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Build of an empty shape: %v", err)
	}
}

func layout(t testing.TB) paths.Layout { return testhome.Layout(t) }

func fileDigest(t testing.TB, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

const workBytes = 16 << 20

type fixture struct {
	b     *qemu.Backend
	env   vmmtest.Env
	store *warm.Store
	shape warm.Shape
	src   warm.Source
	l     paths.Layout
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	b := qemu.New()
	if av := b.Available(context.Background()); !av.OK {
		t.Skipf("qemu: %s", av.Reason)
	}
	env := vmmtest.AgentGuest(t)
	l := layout(t)
	s := warm.NewStore(l, b, warm.StoreOptions{})
	sh, err := s.Complete(context.Background(), warm.Shape{
		ImageName:   "test",
		ImageDigest: fileDigest(t, filepath.Join(filepath.Dir(env.RootBase), "manifest.json")),
		AgentDigest: fileDigest(t, env.Initrd), // the test's agent is built from source
		VCPUs:       1, MemoryMiB: 256, WorkDiskBytes: workBytes, NICs: 1,
		KernelArgs: env.KernelArgs,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{b: b, env: env, store: s, shape: sh, l: l,
		src: warm.Source{Kernel: env.Kernel, Initrd: env.Initrd, RootBase: env.RootBase, RootBaseFormat: "raw"}}
}

// clone is one restored VM with an agent session.
type clone struct {
	spec vmm.Spec
	h    vmm.Handle
	c    *agent.Client
	took time.Duration // Start -> Configure done
}

// startClone restores a clone of tpl with its own root, the given work
// image and MAC, and applies its identity.
func (f *fixture) startClone(t *testing.T, tpl *warm.Template, name, work, mac string, tapAddr ...string) *clone {
	t.Helper()
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "bc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	rt := filepath.Join(dir, "run")
	if err := os.Mkdir(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	spec := vmm.Spec{
		ID: name, VCPUs: tpl.Shape.VCPUs, MemoryMiB: tpl.Shape.MemoryMiB,
		Kernel: f.env.Kernel, Initrd: f.env.Initrd, KernelArgs: tpl.Shape.KernelArgs,
		Root:       vmm.Disk{Path: filepath.Join(dir, "root.qcow2"), Format: "qcow2"},
		Disks:      []vmm.Disk{{Path: work, Format: "raw"}},
		NICs:       []vmm.NIC{{MAC: "02:ba:00:00:ff:01"}},
		RuntimeDir: rt, ConsoleLog: filepath.Join(dir, "console.log"), VMMLog: filepath.Join(dir, "vmm.log"),
		Restore: tpl.Snapshot(),
	}
	addr := "10.99.0.2/24"
	if len(tapAddr) == 2 {
		spec.NICs[0].Tap, addr = tapAddr[0], tapAddr[1]
	}
	t0 := time.Now()
	if spec.Root, err = tpl.CloneRoot(ctx, filepath.Join(dir, "root")); err != nil {
		t.Fatal(err)
	}
	if spec.Root.Path != filepath.Join(dir, "root.qcow2") || spec.Root.Format != "qcow2" {
		t.Fatalf("a QEMU template's clone root is %+v, want a qcow2 overlay", spec.Root)
	}
	h, err := f.b.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.b.Kill(context.Background(), h); err != nil {
			t.Errorf("kill %s: %v", name, err)
		}
	})
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := f.b.DialAgent(rctx, h)
	if err != nil {
		t.Fatal(err)
	}
	c, err := agent.Dial(rctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if mac == "" { // a bare clone, for the control
		return &clone{spec: spec, h: h, c: c, took: time.Since(t0)}
	}
	id, err := warm.Identity(name, &agent.NetConfig{Interface: "eth0", MAC: mac, Address: addr}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Configure(rctx, id); err != nil {
		t.Fatalf("configure %s: %v", name, err)
	}
	return &clone{spec: spec, h: h, c: c, took: time.Since(t0)}
}

// sh runs a shell script in the guest and returns its stdout.
func sh(t *testing.T, c *agent.Client, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	p, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"/bin/sh", "-c", script}, Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatalf("exec %q: %v", script, err)
	}
	st, err := p.Wait()
	if err != nil || st.Code != 0 {
		t.Fatalf("exec %q: %v, exit %d, stderr %s", script, err, st.Code, errb.String())
	}
	return strings.TrimSpace(out.String())
}

func sparse(t *testing.T, path string, size int64) string {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestClones builds a template and proves its clones are distinct
// machines: RNG, uuids, hostnames, machine-ids, MACs, clocks, files; a
// clone can be handed its own work disk in the template's slot; no sshd
// host keys; the template's files never change.
func TestClones(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	t0 := time.Now()
	tpl, err := f.store.Build(ctx, f.shape, f.src)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("template %s built in %v: %d MiB on disk, files %v", tpl.Key[:12], time.Since(t0).Round(time.Millisecond), tpl.Bytes()>>20, keys(tpl.Files))
	if got, ok := f.store.Lookup(f.shape.Key()); !ok || got.Dir != tpl.Dir {
		t.Fatalf("Lookup after Build: %v %v", got, ok)
	}
	if again, err := f.store.Build(ctx, f.shape, f.src); err != nil || again.Dir != tpl.Dir || !again.Created.Equal(tpl.Created) {
		t.Errorf("second Build rebuilt: %v", err)
	}
	before := vmmtest.FileDigests(t, tpl.Dir)

	// Clone A gets a work disk with a file on it, built on the host;
	// clone B an empty one.
	tmp := t.TempDir()
	stage := filepath.Join(tmp, "stage")
	os.Mkdir(stage, 0o755)
	os.WriteFile(filepath.Join(stage, "marker"), []byte("work-a\n"), 0o644)
	workA := sparse(t, filepath.Join(tmp, "a.img"), workBytes)
	if _, err := system.Run(ctx, "mkfs.ext4", "-q", "-F", "-d", stage, workA); err != nil {
		t.Fatal(err)
	}
	workB := sparse(t, filepath.Join(tmp, "b.img"), workBytes)

	a := f.startClone(t, tpl, "clone-a", workA, "02:ba:00:00:0a:01")
	b := f.startClone(t, tpl, "clone-b", workB, "02:ba:00:00:0b:01")
	t.Logf("restore -> identity configured: a %v, b %v", a.took.Round(time.Millisecond), b.took.Round(time.Millisecond))

	probe := `head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo
cat /proc/sys/kernel/random/uuid
cat /proc/sys/kernel/hostname
cat /etc/machine-id
cat /sys/class/net/eth0/address
date +%s.%N
ls /etc/ssh/ssh_host_* 2>/dev/null | wc -l`
	type facts struct{ rnd, uuid, host, mid, mac, clock, keys string }
	get := func(c *clone) facts {
		hostBefore := time.Now()
		l := strings.Split(sh(t, c.c, probe), "\n")
		hostAfter := time.Now()
		if len(l) != 7 {
			t.Fatalf("probe output %q", l)
		}
		secs, err := strconv.ParseFloat(l[5], 64)
		if err != nil {
			t.Fatal(err)
		}
		// The guest read its clock while the probe ran: within a second
		// of [hostBefore, hostAfter] (the probe takes long on a busy host).
		guest := time.Unix(0, int64(secs*1e9))
		if guest.Before(hostBefore.Add(-time.Second)) || guest.After(hostAfter.Add(time.Second)) {
			t.Errorf("%s: guest clock %v is not within a second of the probe's run (%v .. %v)", c.spec.ID, guest, hostBefore, hostAfter)
		}
		return facts{l[0], l[1], l[2], l[3], l[4], l[5], l[6]}
	}
	fa, fb := get(a), get(b)
	t.Logf("clone a: %+v", fa)
	t.Logf("clone b: %+v", fb)
	for what, pair := range map[string][2]string{
		"urandom bytes": {fa.rnd, fb.rnd}, "uuid": {fa.uuid, fb.uuid}, "hostname": {fa.host, fb.host},
		"machine-id": {fa.mid, fb.mid}, "MAC": {fa.mac, fb.mac},
	} {
		if pair[0] == pair[1] {
			t.Errorf("clones share their %s: %s", what, pair[0])
		}
	}
	if fa.host != "clone-a" || fa.mac != "02:ba:00:00:0a:01" || fb.mac != "02:ba:00:00:0b:01" {
		t.Errorf("identity not applied: %+v %+v", fa, fb)
	}
	if fa.keys != "0" || fb.keys != "0" {
		t.Errorf("sshd host keys in clones: %s, %s", fa.keys, fb.keys)
	}

	sh(t, a.c, "echo a > /root/only-in-a; sync")
	if got := sh(t, b.c, "test -e /root/only-in-a && echo present || echo absent"); got != "absent" {
		t.Errorf("a file written in clone a is %s in clone b", got)
	}
	// The work-disk slot: the guest probed an empty disk of this size at
	// the template's boot and may cache its first blocks, so drop caches
	// before mounting what the clone was given.
	if got := sh(t, a.c, "mkdir -p /mnt/w && mount /dev/vdb /mnt/w && cat /mnt/w/marker"); got != "work-a" {
		t.Errorf("clone a's work disk reads %q", got)
	}
	if got := sh(t, b.c, "head -c 4096 /dev/vdb | od -An -tx1 | sort -u | tr -d ' \n'"); !strings.HasPrefix(got, "00") || strings.Trim(got, "0*") != "" {
		t.Errorf("clone b's empty work disk reads %q", got)
	}
	sh(t, a.c, "echo more > /mnt/w/second; umount /mnt/w")

	for _, c := range []*clone{a, b} {
		c.c.Close()
		if err := f.b.Kill(ctx, c.h); err != nil {
			t.Fatal(err)
		}
	}
	// The control: clones that were given no identity are copies (this
	// is what the checks above would catch).
	var bare []string
	for _, n := range []string{"bare-1", "bare-2"} {
		c := f.startClone(t, tpl, n, sparse(t, filepath.Join(tmp, n+".img"), workBytes), "")
		bare = append(bare, sh(t, c.c, "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo; cat /proc/sys/kernel/hostname"))
		c.c.Close()
		f.b.Kill(ctx, c.h)
	}
	t.Logf("control, clones without identity: %q and %q (identical: %v)", bare[0], bare[1], bare[0] == bare[1])

	after := vmmtest.FileDigests(t, tpl.Dir)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("template files changed:\n%v\n%v", before, after)
	}
	if err := tpl.Verify(); err != nil {
		t.Error(err)
	}
}

// TestFallbacks: a template whose files are missing, truncated or whose
// meta is corrupt is "absent" (Lookup false) and Prune removes it; a
// template of another agent is stale.
func TestFallbacks(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	tpl, err := f.store.Build(ctx, f.shape, f.src)
	if err != nil {
		t.Fatal(err)
	}
	key := tpl.Key
	// Corrupt the digest-only way: Lookup (cheap) still accepts it,
	// Verify refuses.
	state := filepath.Join(tpl.Dir, qemu.SnapshotStateName)
	orig, _ := os.ReadFile(state)
	bad := bytes.Clone(orig)
	bad[len(bad)/2] ^= 0xff
	os.WriteFile(state, bad, 0o644)
	if _, ok := f.store.Lookup(key); !ok {
		t.Error("a same-size change failed the cheap Lookup")
	}
	if err := tpl.Verify(); err == nil {
		t.Error("Verify accepted a changed state file")
	}
	os.WriteFile(state, orig, 0o644)

	os.Truncate(state, int64(len(orig))/2)
	if _, ok := f.store.Lookup(key); ok {
		t.Error("Lookup accepted a truncated state file")
	}
	os.WriteFile(state, orig, 0o644)
	if _, ok := f.store.Lookup(key); !ok {
		t.Fatal("restored template not found")
	}
	ram := filepath.Join(tpl.Dir, qemu.SnapshotRAMName)
	os.Rename(ram, ram+".x")
	if _, ok := f.store.Lookup(key); ok {
		t.Error("Lookup accepted a template without its RAM file")
	}
	os.Rename(ram+".x", ram)
	meta := filepath.Join(tpl.Dir, warm.FileMeta)
	m, _ := os.ReadFile(meta)
	os.Chmod(meta, 0o644)
	os.WriteFile(meta, m[:len(m)/2], 0o644)
	if _, ok := f.store.Lookup(key); ok {
		t.Error("Lookup accepted a corrupt meta.json")
	}
	removed, err := f.store.Prune(func(*warm.Template) bool { return true })
	if err != nil || len(removed) != 0 {
		t.Errorf("Prune: %v %v", removed, err)
	}
	if _, err := os.Stat(tpl.Dir); !os.IsNotExist(err) {
		t.Errorf("Prune left a corrupt template: %v", err)
	}

	// Rebuild, then make it stale: another agent.
	tpl, err = f.store.Build(ctx, f.shape, f.src)
	if err != nil {
		t.Fatal(err)
	}
	// A stopped clone's root can be detached from its template: the
	// same content, backed by the image's base instead.
	clone, err := tpl.CloneRoot(ctx, filepath.Join(t.TempDir(), "clone"))
	if err != nil {
		t.Fatal(err)
	}
	overlay := clone.Path
	if err := disk.Detach(ctx, disk.Image{Path: clone.Path, Format: clone.Format}, disk.Image{Path: f.env.RootBase, Format: "raw"}); err != nil {
		t.Fatal(err)
	}
	if info, err := disk.Info(ctx, overlay); err != nil || info.Backing != f.env.RootBase {
		t.Errorf("detached root: %+v %v, want backing %s", info, err, f.env.RootBase)
	}
	if _, err := system.Run(ctx, "qemu-img", "compare", "-q", tpl.RootDisk(), overlay); err != nil {
		t.Errorf("detached root differs from the template's: %v", err)
	}

	cur := f.shape
	digest := func(string) (string, bool) { return f.shape.ImageDigest, true }
	if removed, err := f.store.RemoveStale(cur, digest, nil); err != nil || len(removed) != 0 {
		t.Fatalf("RemoveStale of a current template: %v %v", removed, err)
	}
	cur.AgentDigest = "other"
	if removed, _ := f.store.RemoveStale(cur, digest, func(string) bool { return true }); len(removed) != 0 {
		t.Error("RemoveStale removed a template in use")
	}
	if removed, err := f.store.RemoveStale(cur, digest, nil); err != nil || len(removed) != 1 {
		t.Fatalf("RemoveStale with another agent: %v %v", removed, err)
	}
	if _, ok := f.store.Lookup(key); ok {
		t.Error("stale template still found")
	}
	// A broken template is rebuilt by Build, unless a clone's disk
	// depends on it.
	tpl, err = f.store.Build(ctx, f.shape, f.src)
	if err != nil {
		t.Fatal(err)
	}
	os.Truncate(filepath.Join(tpl.Dir, qemu.SnapshotRAMName), 4096)
	busy := warm.NewStore(f.l, f.b, warm.StoreOptions{InUse: func(string) bool { return true }})
	if _, err := busy.Build(ctx, f.shape, f.src); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("Build over a broken template in use: %v, want ErrConflict", err)
	}
	if removed, err := busy.Prune(func(*warm.Template) bool { return false }); err != nil || len(removed) != 0 {
		t.Errorf("Prune removed a template in use: %v %v", removed, err)
	}
	if tpl, err = f.store.Build(ctx, f.shape, f.src); err != nil {
		t.Fatalf("Build over a broken template: %v", err)
	}
	if err := tpl.Verify(); err != nil {
		t.Error(err)
	}
	if err := f.store.Remove(tpl.Key); err != nil {
		t.Fatal(err)
	}
	if l, _ := f.store.List(); len(l) != 0 {
		t.Errorf("List after Remove: %v", l)
	}

	// A restore of a missing snapshot fails with ErrSnapshotMismatch
	// (the caller then boots cold).
	_, err = f.b.Start(ctx, vmm.Spec{ID: "gone", VCPUs: 1, MemoryMiB: 256, Kernel: f.env.Kernel,
		Root:       vmm.Disk{Path: f.env.RootBase, Format: "raw"},
		RuntimeDir: t.TempDir(), ConsoleLog: "/dev/null", VMMLog: filepath.Join(t.TempDir(), "v.log"),
		Restore: tpl.Snapshot()})
	if !errors.Is(err, vmm.ErrSnapshotMismatch) {
		t.Errorf("restore from a removed template: %v", err)
	}
}

// TestIdleCPU measures the CPU an idle clone uses over 10 s (run with -v).
func TestIdleCPU(t *testing.T) {
	f := newFixture(t)
	tpl, err := f.store.Build(context.Background(), f.shape, f.src)
	if err != nil {
		t.Fatal(err)
	}
	c := f.startClone(t, tpl, "idle", sparse(t, filepath.Join(t.TempDir(), "w.img"), workBytes), "02:ba:00:00:0c:01")
	c.c.Close() // the agent goes back to waiting for a host
	time.Sleep(time.Second)
	frac, err := vmmtest.CPUFraction(c.h.PID, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("idle clone: %.2f%% of a core over 10 s", frac*100)
	if frac > 0.05 {
		t.Errorf("idle clone uses %.1f%% of a core", frac*100)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestCloneTap: a template built with a NIC slot and no tap; its clone is
// given its own tap at restore and, after Configure (with its own MAC),
// talks to the host through it with that MAC.
func TestCloneTap(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a tap")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun")
	}
	f := newFixture(t)
	ctx := context.Background()
	var rnd [2]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	tap := fmt.Sprintf("bgw%02x%02x", rnd[0], rnd[1])
	hostIP := fmt.Sprintf("10.213.%d.1", rnd[0])
	guestIP := fmt.Sprintf("10.213.%d.2", rnd[0])
	for _, argv := range [][]string{
		{"ip", "tuntap", "add", "dev", tap, "mode", "tap"},
		{"ip", "addr", "add", hostIP + "/30", "dev", tap},
		{"ip", "link", "set", tap, "up"},
	} {
		if _, err := system.Run(ctx, argv...); err != nil {
			t.Skipf("tap: %v", err)
		}
		if argv[1] == "tuntap" {
			t.Cleanup(func() { system.Run(context.Background(), "ip", "link", "del", tap) })
		}
	}
	tpl, err := f.store.Build(ctx, f.shape, f.src)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", hostIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	mac := "02:ba:00:00:0d:01"
	c := f.startClone(t, tpl, "tapclone", sparse(t, filepath.Join(t.TempDir(), "w.img"), workBytes), mac, tap, guestIP+"/30")
	got := make(chan string, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		b, _ := io.ReadAll(conn)
		got <- strings.TrimSpace(string(b))
	}()
	sh(t, c.c, fmt.Sprintf("bash -c 'echo hello-from-clone > /dev/tcp/%s/%d'", hostIP, port))
	select {
	case m := <-got:
		if m != "hello-from-clone" {
			t.Errorf("host got %q", m)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no connection from the clone")
	}
	out, err := system.Run(ctx, "ip", "neigh", "show", "dev", tap)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), mac) {
		t.Errorf("the host's neighbour table for %s lacks the clone's MAC %s:\n%s", tap, mac, out)
	}
	t.Logf("neighbours on %s: %s", tap, strings.TrimSpace(string(out)))
}

// DigestFile covers data extents and their places; any write shows, even
// of zeros into a hole; a 4 GiB hole is not read.
func TestDigestFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(4 << 30); err != nil {
		t.Fatal(err)
	}
	digest := func() string {
		t.Helper()
		n, d, err := warm.DigestFile(p)
		if err != nil || n != 4<<30 {
			t.Fatalf("digestFile: %d %v", n, err)
		}
		return d
	}
	seen := map[string]string{}
	step := func(name string, off int64, b []byte) {
		t.Helper()
		if b != nil {
			if _, err := f.WriteAt(b, off); err != nil {
				t.Fatal(err)
			}
		}
		d := digest()
		if prev, ok := seen[d]; ok {
			t.Fatalf("%s: same digest as %s", name, prev)
		}
		seen[d] = name
	}
	step("empty", 0, nil)
	step("data at 1 MiB", 1<<20, []byte("x"))
	step("same byte changed", 1<<20, []byte("y"))
	step("zeros into a hole", 3<<30, make([]byte, 4096))
	if d := digest(); seen[d] != "zeros into a hole" {
		t.Fatal("digest not stable")
	}
}
