package warm_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/testhome"
	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/vmm/fakevmm"
	"github.com/banger-sh/banger/internal/warm"
)

// poolEnv is a pool on the fake backend, in a home of its own.
type poolEnv struct {
	t     *testing.T
	b     *fakevmm.Backend
	l     paths.Layout
	store *warm.Store
	p     *warm.Pool
	want  warm.Want
	ids   int
}

func newPoolEnv(t *testing.T, spares int) *poolEnv {
	t.Helper()
	l := testhome.Layout(t)
	home := t.TempDir() // the image's files
	img := filepath.Join(home, "image")
	os.Mkdir(img, 0o755)
	src := warm.Source{Kernel: filepath.Join(img, "vmlinux"), Initrd: filepath.Join(img, "initrd"), RootBase: filepath.Join(img, "rootfs.ext4"), RootBaseFormat: "raw"}
	os.WriteFile(src.Kernel, []byte("\x7fELF fake kernel"), 0o644)
	os.WriteFile(src.Initrd, nil, 0o644)
	os.WriteFile(src.RootBase, []byte("rootfs"), 0o644)
	os.Truncate(src.RootBase, 64<<20)
	e := &poolEnv{t: t, b: fakevmm.New(), l: l}
	e.store = warm.NewStore(l, e.b, warm.StoreOptions{Settle: time.Millisecond, ReadyTimeout: 10 * time.Second, InUse: func(string) bool { return false }})
	e.p = warm.New(warm.Options{Store: e.store, Backend: e.b, Layout: l, Spares: spares, NewID: e.newID})
	e.want = warm.Want{ImageName: "default", ImageDigest: "sha256:" + strings.Repeat("ab", 32), VCPUs: 1, MemoryMiB: 256, RootBytes: 64 << 20, Source: src}
	t.Cleanup(func() {
		e.p.Close()
		for _, pr := range e.b.FindProcesses(filepath.Dir(l.VMRuntimeDir("x"))) {
			syscall.Kill(pr.PID, syscall.SIGKILL)
		}
	})
	return e
}

func (e *poolEnv) newID() string {
	e.ids++
	return fmt.Sprintf("%08x", 0xa0000000+e.ids)
}

// procs is how many fake VMM processes run in this home.
func (e *poolEnv) procs() int {
	return len(e.b.FindProcesses(filepath.Dir(e.l.VMRuntimeDir("x"))))
}

func (e *poolEnv) key() string {
	sh, err := e.p.Shape(context.Background(), e.want.ImageName, e.want.ImageDigest, e.want.VCPUs, e.want.MemoryMiB, e.want.RootBytes)
	if err != nil {
		e.t.Fatal(err)
	}
	return sh.Key()
}

func (e *poolEnv) until(what string, f func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			e.t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// vmDir makes the directory of a VM the way a create does before Start.
func (e *poolEnv) vmDir(id string) {
	if err := os.MkdirAll(e.l.VMDir(id), 0o755); err != nil {
		e.t.Fatal(err)
	}
}

func (e *poolEnv) start(c *warm.Claim, id, name string) *warm.Clone {
	e.t.Helper()
	cl, err := c.Start(context.Background(), warm.Guest{ID: id, Name: name})
	if err != nil {
		e.t.Fatalf("start %s: %v", name, err)
	}
	return cl
}

func (e *poolEnv) kill(cl *warm.Clone) {
	cl.Agent.Close()
	if err := e.b.Kill(context.Background(), cl.Handle); err != nil {
		e.t.Fatal(err)
	}
}

// TestPoolClaimStart walks one shape through the pool: no template (cold,
// and the template built), a spare made, returned untouched, served, and
// discarded; a restore on demand; a restore that fails (cold, nothing of
// it left).
func TestPoolClaimStart(t *testing.T) {
	e := newPoolEnv(t, 1)
	ctx := context.Background()
	key := e.key()

	// No template yet: cold; ColdBoot has the template built (2 CPUs here,
	// 1 vCPU wanted: at once), then a spare of it made.
	c := e.p.Claim(ctx, e.want)
	if c.ID() != "" || c.Spare() {
		t.Fatalf("claim without a template: id %q spare %v", c.ID(), c.Spare())
	}
	e.vmDir("cold0001")
	if cl := e.start(c, "cold0001", "cold"); cl != nil {
		t.Fatalf("a clone without a template: %+v", cl)
	}
	c.ColdBoot()()
	e.until("a ready spare", func() bool { return e.p.SpareState(key) == "ready" })
	spareID := e.p.SpareID(key)

	// Returned untouched (the create failed before it began): still the
	// pool's, same id.
	c = e.p.Claim(ctx, e.want)
	if c.ID() != spareID || !c.Spare() || e.p.SpareState(key) != "" {
		t.Fatalf("claim: id %q (spare %s), state %q", c.ID(), spareID, e.p.SpareState(key))
	}
	c.Return()
	if e.p.SpareState(key) != "ready" || e.p.SpareID(key) != spareID {
		t.Fatalf("after Return: %q %q", e.p.SpareState(key), e.p.SpareID(key))
	}

	// Served: the VM takes the spare's id; its guest was the spare, then
	// this VM. The pool makes the next spare.
	c = e.p.Claim(ctx, e.want)
	served := e.start(c, c.ID(), "served")
	if served == nil || !served.Spare || served.Key != key {
		t.Fatalf("served: %+v", served)
	}
	if h := e.b.Hostnames(spareID); len(h) != 2 || h[0] != "spare-"+spareID || h[1] != "served" {
		t.Errorf("served hostnames %v", h)
	}
	c.Discard() // after Start: nothing
	if e.b.Status(ctx, served.Handle) != vmm.StateRunning {
		t.Fatal("Discard after Start killed the served VM")
	}
	e.until("the next spare", func() bool { return e.p.SpareState(key) == "ready" && e.p.SpareID(key) != spareID })
	e.kill(served)

	// Discarded before Start: its process and files go.
	c = e.p.Claim(ctx, e.want)
	gone := c.ID()
	c.Discard()
	e.until("the discarded spare gone", func() bool {
		_, err := os.Stat(e.l.VMDir(gone))
		return errors.Is(err, os.ErrNotExist) && e.procs() == 0
	})

	// No spare left (a discard makes none): a restore on demand.
	c = e.p.Claim(ctx, e.want)
	if c.Spare() {
		t.Fatal("a spare after DropSpare")
	}
	e.vmDir("rest0001")
	restored := e.start(c, "rest0001", "restored")
	if restored == nil || restored.Spare || restored.Template == nil {
		t.Fatalf("restore: %+v", restored)
	}
	if h := e.b.Hostnames("rest0001"); !slices.Equal(h, []string{"restored"}) {
		t.Errorf("restored hostnames %v", h)
	}
	e.kill(restored)
	e.until("the spare after the restore", func() bool { return e.p.SpareState(key) == "ready" })
	e.p.DropSpare(key)
	e.until("no spare", func() bool { return e.p.SpareState(key) == "" && e.procs() == 0 })

	// A restore that fails: cold, and nothing of the attempt is left in
	// the VM's directory (clone root, empty slot) or runtime dir.
	e.b.FailStart = func(s vmm.Spec) error {
		if s.Restore != nil {
			return fmt.Errorf("injected: %w", vmm.ErrSnapshotMismatch)
		}
		return nil
	}
	c = e.p.Claim(ctx, e.want)
	e.vmDir("fail0001")
	if cl := e.start(c, "fail0001", "failed"); cl != nil {
		t.Fatalf("a clone from a failing restore: %+v", cl)
	}
	if ents, _ := os.ReadDir(e.l.VMDir("fail0001")); len(ents) != 0 {
		t.Errorf("left in the VM's directory: %v", ents)
	}
	if _, err := os.Stat(e.l.VMRuntimeDir("fail0001")); err == nil {
		t.Error("runtime dir left")
	}
	e.b.FailStart = nil

	// --cold and a workspace disk that does not fit the slot take no
	// spare; a nil pool claims nothing.
	sh, err := e.p.Shape(ctx, e.want.ImageName, e.want.ImageDigest, e.want.VCPUs, e.want.MemoryMiB, e.want.RootBytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.Build(ctx, sh, e.want.Source); err != nil { // exists: a spare of it
		t.Fatal(err)
	}
	e.until("a spare", func() bool { return e.p.SpareState(key) == "ready" })
	for name, w := range map[string]warm.Want{"cold": func() warm.Want { w := e.want; w.Cold = true; return w }(),
		"work disk": func() warm.Want { w := e.want; w.WorkDiskBytes = 1 << 20; return w }()} {
		c := e.p.Claim(ctx, w)
		if c.Spare() || e.p.SpareState(key) != "ready" {
			t.Errorf("%s: took the spare", name)
		}
	}
	var none *warm.Pool
	if c := none.Claim(ctx, e.want); c.ID() != "" {
		t.Error("nil pool claimed a spare")
	} else if cl, err := c.Start(ctx, warm.Guest{ID: "x", Name: "x"}); cl != nil || err != nil {
		t.Errorf("nil pool start: %+v %v", cl, err)
	}
}
