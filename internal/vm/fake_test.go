package vm

// Fast tests of the manager's state machine on the fake backend
// (internal/vmm/fakevmm): real SQLite, real files, real processes (the
// fake's), the real agent protocol; no VM boots, so they run in
// `go test -short`. The network is off (nil): taps and leases are
// covered by the e2e tests.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/config"
	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/image"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/store"
	"github.com/banger-sh/banger/internal/testhome"
	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/vmm/fakevmm"
	"github.com/banger-sh/banger/internal/warm"
)

// fakeImages serves one stand-in image.
type fakeImages struct {
	img  *store.Image
	fail error
}

func (f *fakeImages) Resolve(ctx context.Context, name string, _ Progress) (*store.Image, error) {
	if f.fail != nil {
		return nil, f.fail
	}
	return f.img, nil
}

// writeFakeImage makes an image directory the manager accepts: an "ELF"
// kernel, a sparse rootfs and a manifest (its digests are not re-hashed
// by image.Load).
func writeFakeImage(t *testing.T, dir string) *image.Manifest {
	t.Helper()
	files := map[string]image.FileInfo{}
	for name, data := range map[string]string{image.FileVmlinux: "\x7fELF fake kernel", image.FileRootfs: "rootfs"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		if name == image.FileRootfs {
			os.Truncate(p, 64<<20)
		}
		st, _ := os.Stat(p)
		files[name] = image.FileInfo{Size: st.Size(), SHA256: strings.Repeat(fmt.Sprintf("%x", len(name)%16), 64)}
	}
	m := &image.Manifest{FormatVersion: image.FormatVersion, Name: "default", Source: image.SourceBuild, KernelVersion: "6.1-fake", RootfsSize: 64 << 20, Files: files, Digest: image.ComputeDigest(files)}
	b, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, image.FileManifest), b, 0o644); err != nil {
		t.Fatal(err)
	}
	man, err := image.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return man
}

// env is one banger home with a manager on the fake backend.
type env struct {
	t      *testing.T
	b      *fakevmm.Backend
	layout paths.Layout
	store  *store.Store
	images *fakeImages
	tpl    *warm.Store
	m      *Manager
	opts   Options
}

type envOpt func(*Options)

func withSpares(o *Options) { o.Spares = 1 }
func withDisk(s disk.Strategy) envOpt {
	return func(o *Options) { o.Disk = s }
}

func newEnv(t *testing.T, opts ...envOpt) *env {
	t.Helper()
	l := testhome.Layout(t)
	home := t.TempDir() // the image's files
	ctx := context.Background()
	st, err := store.Open(ctx, l.StoreFile())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	imgDir := filepath.Join(home, "image")
	os.Mkdir(imgDir, 0o755)
	man := writeFakeImage(t, imgDir)
	img := &store.Image{ID: "img1", Name: "default", Dir: imgDir, Digest: man.Digest, KernelVersion: man.KernelVersion}
	if err := st.CreateImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, b: fakevmm.New(), layout: l, store: st, images: &fakeImages{img: img}}
	e.tpl = warm.NewStore(l, e.b, warm.StoreOptions{Settle: time.Millisecond, ReadyTimeout: 10 * time.Second, InUse: func(string) bool { return false }})
	cfg := config.Defaults()
	cfg.VM.Disk = "64M"
	e.opts = Options{Store: st, Layout: l, Config: cfg, Backend: e.b, Images: e.images, Templates: e.tpl,
		Log: slog.New(slog.DiscardHandler), ReadyTimeout: 5 * time.Second}
	for _, o := range opts {
		o(&e.opts)
	}
	e.m = New(e.opts)
	t.Cleanup(func() { e.close() })
	t.Cleanup(func() { e.killAll() })
	return e
}

func (e *env) close() {
	if e.m != nil {
		e.m.Close(context.Background())
		e.m = nil
	}
}

// restart is a daemon restart: a new manager (and backend instance) on
// the same home, reconciled.
func (e *env) restart() {
	e.t.Helper()
	e.close()
	old := e.b
	e.b = fakevmm.New()
	e.b.FailStart, e.b.FailConfigure, e.b.Silent = old.FailStart, old.FailConfigure, old.Silent
	e.opts.Backend = e.b
	e.tpl = warm.NewStore(e.layout, e.b, warm.StoreOptions{Settle: time.Millisecond, InUse: func(string) bool { return false }})
	e.opts.Templates = e.tpl
	e.m = New(e.opts)
	if err := e.m.Reconcile(context.Background()); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) runtimeRoot() string { return filepath.Dir(e.layout.VMRuntimeDir("x")) }

// procs are the fake VMM processes of this home.
func (e *env) procs() []vmm.Process { return e.b.FindProcesses(e.runtimeRoot()) }

func (e *env) killAll() {
	for _, p := range e.procs() {
		killPID(p.PID)
	}
}

func (e *env) create(name string, mod ...func(*api.CreateVMRequest)) (api.VM, error) {
	req := api.CreateVMRequest{Name: name}
	for _, f := range mod {
		f(&req)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return e.m.Create(ctx, req, nil)
}

func (e *env) mustCreate(name string, mod ...func(*api.CreateVMRequest)) api.VM {
	e.t.Helper()
	v, err := e.create(name, mod...)
	if err != nil {
		e.t.Fatalf("create %s: %v", name, err)
	}
	if v.State != StateRunning {
		e.t.Fatalf("create %s: state %s", name, v.State)
	}
	return v
}

func cold(r *api.CreateVMRequest) { r.Cold = true }

// dirNames lists a directory ("" for none).
func dirNames(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// assertOnly checks that exactly the VMs with these ids exist: rows,
// state dirs, runtime dirs and processes (waiting a little for work in
// the background, e.g. a spare being dropped, to settle).
func (e *env) assertOnly(ids ...string) {
	e.t.Helper()
	want := slices.Clone(ids)
	slices.Sort(want)
	deadline := time.Now().Add(5 * time.Second)
	for {
		problems := e.leftovers(want)
		if len(problems) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, p := range problems {
				e.t.Error(p)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) leftovers(want []string) []string {
	var out []string
	rows, err := e.store.ListVMs(context.Background())
	if err != nil {
		return []string{err.Error()}
	}
	var rowIDs []string
	for _, r := range rows {
		rowIDs = append(rowIDs, r.ID)
	}
	slices.Sort(rowIDs)
	if !slices.Equal(rowIDs, want) {
		out = append(out, fmt.Sprintf("rows %v, want %v", rowIDs, want))
	}
	for _, id := range dirNames(e.layout.VMsDir()) {
		if !slices.Contains(want, id) {
			out = append(out, fmt.Sprintf("a VM directory is left: %s (%v)", id, dirNames(e.layout.VMDir(id))))
		}
	}
	for _, id := range dirNames(e.runtimeRoot()) {
		if !slices.Contains(want, id) {
			out = append(out, "a runtime directory is left: "+id)
		}
	}
	for _, p := range e.procs() {
		if !slices.Contains(want, p.ID) {
			out = append(out, fmt.Sprintf("a process is left: %+v", p))
		}
	}
	return out
}

func (e *env) waitState(name, want string) api.VM {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, err := e.m.Get(context.Background(), name)
		if err == nil && v.State == want {
			return v
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("vm %s: state %s (err %v), want %s", name, v.State, err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) handle(name string) vmm.Handle {
	e.t.Helper()
	r, err := e.m.get(context.Background(), name)
	if err != nil {
		e.t.Fatal(err)
	}
	return r.handle
}

// waitTemplate waits for the background template build of the default
// shape (started by a cold create).
func (e *env) waitTemplate() {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ts, _ := e.tpl.List()
		if len(ts) > 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatal("no template built")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) waitSpare() {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ts, _ := e.tpl.List()
		if len(ts) > 0 && e.m.Warm().SpareState(ts[0].Key) == "ready" {
			return
		}
		if time.Now().After(deadline) {
			st := ""
			if len(ts) > 0 {
				st = e.m.Warm().SpareState(ts[0].Key)
			}
			e.t.Fatalf("no spare ready (%q)", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFakeColdCreateStopStartDelete(t *testing.T) {
	e := newEnv(t)
	v := e.mustCreate("a", cold)
	if v.Boot != "cold" || v.Backend != fakevmm.Name {
		t.Errorf("boot %q backend %q", v.Boot, v.Backend)
	}
	// A raw-only backend on a filesystem without reflinks: a sparse copy,
	// found again by its format's name.
	if v.RootDisk != filepath.Join(e.layout.VMDir(v.ID), "root.img") {
		t.Errorf("root disk %s", v.RootDisk)
	}
	if st, err := os.Stat(v.RootDisk); err != nil || st.Size() != 64<<20 {
		t.Errorf("root disk: %v %v", st, err)
	}
	if h := e.b.Hostnames(v.ID); !slices.Equal(h, []string{"a"}) {
		t.Errorf("guest hostnames %v", h)
	}
	e.assertOnly(v.ID)
	if _, err := e.create("a", cold); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("second create of a: %v", err)
	}
	e.assertOnly(v.ID)

	ctx := context.Background()
	s, err := e.m.Stop(ctx, "a", StopOptions{Timeout: 5 * time.Second})
	if err != nil || s.State != StateStopped {
		t.Fatalf("stop: %+v %v", s.State, err)
	}
	if len(e.procs()) != 0 {
		t.Errorf("processes after stop: %+v", e.procs())
	}
	if _, err := os.Stat(e.layout.VMRuntimeDir(v.ID)); err == nil {
		t.Error("runtime dir kept after stop")
	}
	if _, err := os.Stat(v.RootDisk); err != nil {
		t.Errorf("root disk gone after stop: %v", err)
	}
	s, err = e.m.Start(ctx, "a", nil)
	if err != nil || s.State != StateRunning {
		t.Fatalf("start: %+v %v", s.State, err)
	}
	if n := len(e.procs()); n != 1 {
		t.Errorf("%d processes after start", n)
	}
	if err := e.m.Delete(ctx, "a", DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.assertOnly()
	if _, err := e.m.Get(ctx, "a"); err == nil {
		t.Error("deleted vm still found")
	}
}

func killPID(pid int) { syscall.Kill(pid, syscall.SIGKILL) }

// TestFakeCreateFallbacks: spare → warm → cold. A create is served by a
// ready spare clone; when that fails, by a restore; when that fails, by a
// cold boot; each failure leaves nothing of the failed attempt.
func TestFakeCreateFallbacks(t *testing.T) {
	e := newEnv(t, withSpares)
	first := e.mustCreate("first")
	if first.Boot != "cold" {
		t.Fatalf("first create: boot %q, want cold (no template yet)", first.Boot)
	}
	e.waitTemplate()
	e.waitSpare()

	// 1. The spare serves the next create: its id is the spare's, its
	// guest was configured as the spare first, then as this VM.
	v := e.mustCreate("spare-served")
	if v.Boot != "warm" {
		t.Errorf("spare-served: boot %q", v.Boot)
	}
	if h := e.b.Hostnames(v.ID); len(h) != 2 || !strings.HasPrefix(h[0], "spare-") || h[1] != "spare-served" {
		t.Errorf("spare-served hostnames %v, want spare-…, spare-served", h)
	}
	e.waitSpare() // refilled

	// 2. The spare's identity step (its Configure as this VM) fails: a
	// restore on demand serves, under the same id.
	var failures atomic.Int32
	e.b.FailConfigure = func(id string) error {
		if failures.Add(-1) >= 0 {
			return errors.New("injected configure failure")
		}
		return nil
	}
	ts, _ := e.tpl.List()
	spareID := e.spareID(ts[0].Key)
	startsBefore := e.b.Starts()
	failures.Store(1)
	w := e.mustCreate("warm-served")
	if w.Boot != "warm" {
		t.Errorf("warm-served: boot %q", w.Boot)
	}
	// Served under the spare's id: the spare was tried (its own
	// identity, then the injected failure), then a restore configured.
	if h := e.b.Hostnames(w.ID); w.ID != spareID || len(h) != 2 || !strings.HasPrefix(h[0], "spare-") || h[1] != "warm-served" {
		t.Errorf("warm-served id %s (spare %s) hostnames %v, want spare-…, warm-served", w.ID, spareID, h)
	}
	if got := e.b.Starts() - startsBefore; got < 1 {
		t.Errorf("%d processes started for warm-served, want a restore", got)
	}
	e.waitSpare()

	// 3. Restores fail (and the spare is used up by a cold create): cold.
	e.m.Warm().DropSpare(ts[0].Key)
	e.b.FailStart = func(s vmm.Spec) error {
		if s.Restore != nil {
			return fmt.Errorf("injected restore failure: %w", vmm.ErrSnapshotMismatch)
		}
		return nil
	}
	c := e.mustCreate("cold-served")
	if c.Boot != "cold" {
		t.Errorf("cold-served: boot %q, want cold after the restore failed", c.Boot)
	}
	e.b.FailStart = nil
	// The clones' roots are copies (a raw-only backend): the template is
	// not needed by them, and can be pruned.
	if e.m.TemplateInUse(ts[0].Key) {
		t.Error("template in use by clones whose roots are copies")
	}
	e.m.Warm().DropSpare(ts[0].Key)
	e.assertOnly(first.ID, v.ID, w.ID, c.ID)
	for _, id := range []string{first.ID, v.ID, w.ID, c.ID} {
		if img, ok := disk.Existing(e.layout.VMRootStem(id)); !ok || img.Format != "raw" {
			t.Errorf("vm %s root disk %+v %v", id, img, ok)
		}
	}
}

// spareID is the id of the spare clone of the template key (the spare's
// runtime dir is its id's).
func (e *env) spareID(key string) string {
	if id := e.m.Warm().SpareID(key); id != "" {
		return id
	}
	e.t.Fatal("no spare")
	return ""
}

// failingDisk is a disk strategy that fails.
type failingDisk struct{ disk.Strategy }

func (failingDisk) Create(context.Context, disk.Image, string, int64) error {
	return errors.New("injected disk failure")
}

// TestFakeCreateUndo injects a failure at each step of a cold create:
// the create fails with it, and no row, directory, runtime dir or
// process is left.
func TestFakeCreateUndo(t *testing.T) {
	sparse, err := disk.Choose([]string{"raw"}, t.TempDir(), disk.RealHost())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		opts   []envOpt
		setup  func(e *env)
		ctx    time.Duration
		errHas string
	}{
		{name: "image", setup: func(e *env) { e.images.fail = errors.New("injected image failure") }, errHas: "injected image failure"},
		{name: "root disk", opts: []envOpt{withDisk(failingDisk{sparse})}, errHas: "injected disk failure"},
		{name: "vmm start", setup: func(e *env) {
			e.b.FailStart = func(vmm.Spec) error { return errors.New("injected start failure") }
		}, errHas: "injected start failure"},
		{name: "agent never answers", setup: func(e *env) {
			e.b.Silent = func(string) bool { return true }
			e.m.opts.ReadyTimeout = 500 * time.Millisecond
		}, errHas: "agent"},
		{name: "configure", setup: func(e *env) {
			e.b.FailConfigure = func(string) error { return errors.New("injected configure failure") }
		}, errHas: "injected configure failure"},
		{name: "request cancelled", setup: func(e *env) {
			e.b.Silent = func(string) bool { return true }
		}, ctx: 300 * time.Millisecond, errHas: "waiting for the agent: context deadline exceeded"},
		{name: "vmm dies during boot", setup: func(e *env) {
			e.b.Silent = func(string) bool { return true }
			go func() {
				for i := 0; i < 200; i++ {
					if ps := e.procs(); len(ps) > 0 {
						killPID(ps[0].PID)
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
			}()
		}, errHas: "exited during boot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.opts...)
			if tc.setup != nil {
				tc.setup(e)
			}
			d := tc.ctx
			if d == 0 {
				d = 20 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), d)
			defer cancel()
			_, err := e.m.Create(ctx, api.CreateVMRequest{Name: "x", Cold: true}, nil)
			if err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("create: %v, want an error with %q", err, tc.errHas)
			}
			e.assertOnly()
			// The name is free again, and the next create works.
			e.b.FailStart, e.b.FailConfigure, e.b.Silent, e.images.fail = nil, nil, nil, nil
			e.m.opts.ReadyTimeout = 5 * time.Second
			if tc.name == "root disk" {
				return // the strategy fails for ever
			}
			v := e.mustCreate("x", cold)
			e.assertOnly(v.ID)
		})
	}
}

// TestFakeExitWatcher: a VMM that dies on its own is noticed; its reason
// comes from the backend's ExitReason.
func TestFakeExitWatcher(t *testing.T) {
	e := newEnv(t)
	v := e.mustCreate("a", cold)
	if err := e.b.Crash(e.handle("a"), "injected crash"); err != nil {
		t.Fatal(err)
	}
	got := e.waitState("a", StateError)
	if got.LastError != "VMM exited: injected crash" {
		t.Errorf("last error %q", got.LastError)
	}
	if _, err := os.Stat(e.layout.VMRuntimeDir(v.ID)); err == nil {
		t.Error("runtime dir kept")
	}
	// It starts again.
	if s, err := e.m.Start(context.Background(), "a", nil); err != nil || s.State != StateRunning {
		t.Fatalf("start after crash: %v %v", s.State, err)
	}
}

// TestFakeReconcile: after a daemon crash, the world decides: a VM whose
// process died is stopped with its reason, a live one is re-attached, a
// row caught mid-create is removed, a process no row owns is killed and
// its directories removed.
func TestFakeReconcile(t *testing.T) {
	e := newEnv(t)
	dead := e.mustCreate("dead", cold)
	alive := e.mustCreate("alive", cold)
	deadH := e.handle("dead")
	ctx := context.Background()

	// A process no row owns: started in this home's runtime root.
	orphanID := "0rphan00"
	rt := e.layout.VMRuntimeDir(orphanID)
	os.MkdirAll(rt, 0o700)
	os.MkdirAll(e.layout.VMDir(orphanID), 0o755)
	root := filepath.Join(e.layout.VMDir(orphanID), "root.img")
	os.WriteFile(root, nil, 0o644)
	man, _ := image.Load(e.images.img.Dir)
	orphan, err := e.b.Start(ctx, vmm.Spec{ID: orphanID, VCPUs: 1, MemoryMiB: 128, Kernel: man.Path(image.FileVmlinux),
		Root: vmm.Disk{Path: root, Format: "raw"}, RuntimeDir: rt, ConsoleLog: filepath.Join(e.layout.VMDir(orphanID), "console.log"), VMMLog: filepath.Join(e.layout.VMDir(orphanID), "vmm.log")})
	if err != nil {
		t.Fatal(err)
	}
	// A template build's VM, left by a daemon killed mid-build.
	tplRT := e.layout.TemplateRuntimeDir("tpl-0bad")
	os.MkdirAll(tplRT, 0o700)
	tplVM, err := e.b.Start(ctx, vmm.Spec{ID: "tpl-0bad", VCPUs: 1, MemoryMiB: 128, Kernel: man.Path(image.FileVmlinux),
		Root: vmm.Disk{Path: root, Format: "raw"}, RuntimeDir: tplRT, ConsoleLog: filepath.Join(t.TempDir(), "c"), VMMLog: filepath.Join(t.TempDir(), "v")})
	if err != nil {
		t.Fatal(err)
	}
	// A row left mid-create.
	spec, _ := json.Marshal(Spec{VCPUs: 1, MemoryMiB: 128, Backend: fakevmm.Name, Net: "off"})
	if err := e.store.InsertVM(ctx, &store.VM{ID: "c0ffee00", Name: "halfway", State: StateCreating, ImageID: "img1", Spec: spec}); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(e.layout.VMDir("c0ffee00"), 0o755)

	// The daemon "crashes" (its manager goes without stopping VMs), then
	// "dead"'s VMM dies while no daemon runs.
	e.close()
	if err := e.b.Crash(deadH, "died while the daemon was down"); err != nil {
		t.Fatal(err)
	}
	e.b.WaitExit(ctx, deadH)
	e.restart()

	if v := e.waitState("dead", StateError); v.LastError != "VMM exited: died while the daemon was down" {
		t.Errorf("dead: last error %q", v.LastError)
	}
	if v, _ := e.m.Get(ctx, "alive"); v.State != StateRunning {
		t.Errorf("alive: %s", v.State)
	}
	if _, err := e.m.Get(ctx, "halfway"); err == nil {
		t.Error("the half-created vm is still there")
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := e.b.WaitExit(wctx, orphan); err != nil {
		t.Errorf("the orphan VMM still runs: %v", err)
	}
	if err := e.b.WaitExit(wctx, tplVM); err != nil {
		t.Errorf("the template build's VMM still runs: %v", err)
	}
	if _, err := os.Stat(tplRT); err == nil {
		t.Error("the template build's runtime dir is left")
	}
	e.assertOnly(dead.ID, alive.ID)
	if ps := e.procs(); len(ps) != 1 || ps[0].ID != alive.ID {
		t.Errorf("processes %+v, want only alive's", ps)
	}
	// The re-attached VM is watched and usable: stop and delete work.
	if s, err := e.m.Stop(ctx, "alive", StopOptions{Timeout: 5 * time.Second}); err != nil || s.State != StateStopped {
		t.Fatalf("stop after re-attach: %v %v", s.State, err)
	}
	if err := e.m.Delete(ctx, "alive", DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Delete(ctx, "dead", DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.assertOnly()
}

// TestFakeRootFormatRefused: a VM whose root disk the backend cannot
// take (made for another backend) is refused at start with a clear
// error, and left stopped.
func TestFakeRootFormatRefused(t *testing.T) {
	e := newEnv(t)
	v := e.mustCreate("a", cold)
	ctx := context.Background()
	if _, err := e.m.Stop(ctx, "a", StopOptions{Timeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	stem := e.layout.VMRootStem(v.ID)
	if err := os.Rename(stem+".img", stem+".qcow2"); err != nil {
		t.Fatal(err)
	}
	_, err := e.m.Start(ctx, "a", nil)
	if err == nil || !strings.Contains(err.Error(), "qcow2") {
		t.Fatalf("start with a qcow2 root on a raw-only backend: %v", err)
	}
	if s, _ := e.m.Get(ctx, "a"); s.State != StateStopped && s.State != StateError {
		t.Errorf("state %s after the refused start", s.State)
	}
	if len(e.procs()) != 0 {
		t.Errorf("processes: %+v", e.procs())
	}
}

// noFormats is a backend that takes no root-disk format (the daemon's
// stand-in when no hypervisor can run).
type noFormats struct{ *fakevmm.Backend }

func (noFormats) RootFormats() []string { return nil }
func (noFormats) Available(context.Context) vmm.Availability {
	return vmm.Availability{Reason: "no hypervisor here"}
}

func TestFakeNoDiskStrategy(t *testing.T) {
	e := newEnv(t)
	e.close()
	e.opts.Backend = noFormats{e.b}
	e.m = New(e.opts)
	_, err := e.create("a", cold)
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "no hypervisor here") {
		t.Fatalf("create without a disk strategy: %v", err)
	}
	e.assertOnly()
}
