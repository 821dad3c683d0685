package vmmtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/vmm"
)

// SnapshotSettle is how long the suite waits between closing its agent
// connection to a template and snapshotting it.
const SnapshotSettle = 500 * time.Millisecond

// WorkSlotBytes is the size of the spare work-disk slot the snapshot
// suite gives its template (and each clone, a file of its own).
const WorkSlotBytes = 8 << 20

// FileDigests returns name -> sha256 of every regular file in dir (not
// recursive) and of the extra paths (keyed by path).
func FileDigests(t testing.TB, dir string, extra ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			paths = append(paths, filepath.Join(dir, e.Name()))
		}
	}
	paths = append(paths, extra...)
	sort.Strings(paths)
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[p] = hex.EncodeToString(h.Sum(nil))
	}
	return out
}

// snapshot: a template booted with Spec.SnapshotDir is saved; two clones
// restored from it run at once on their own root overlays and work
// disks; the snapshot's files and the template's root never change; a
// clone whose shape differs is refused with ErrSnapshotMismatch and
// leaves nothing running.
func (s *suite) snapshot(t *testing.T) {
	sn := s.b.(vmm.Snapshotter)
	ctx := context.Background()
	spec := s.newSpec(t)
	base := filepath.Dir(spec.RuntimeDir)
	dir := filepath.Join(base, "snap")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	spec.SnapshotDir = dir
	spec.Disks = []vmm.Disk{{Path: sparseFile(t, filepath.Join(base, "work.img"), WorkSlotBytes), Format: disk.FormatRaw}}
	spec.NICs = []vmm.NIC{{MAC: "02:ba:00:00:00:01"}} // a slot with no tap
	tpl := s.start(t, ctx, spec)
	s.ready(t, ctx, tpl)
	// A VM that is not this dir's template is refused and left running.
	other := s.start(t, ctx, s.newSpec(t))
	if err := sn.Snapshot(ctx, other.h, dir); err == nil {
		t.Error("Snapshot of a VM started without SnapshotDir succeeded")
	}
	if st := s.b.Status(ctx, other.h); st != vmm.StateRunning {
		t.Errorf("a refused Snapshot changed the VM: %s", st)
	}
	if err := s.b.Kill(ctx, other.h); err != nil {
		t.Fatal(err)
	}
	// Let the guest agent see the host leave and go back to waiting for
	// one: a clone of an agent caught mid-session drops its host's first
	// handshake attempt.
	time.Sleep(SnapshotSettle)
	t0 := time.Now()
	if err := sn.Snapshot(ctx, tpl.h, dir); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	t.Logf("Snapshot took %v", time.Since(t0).Round(time.Millisecond))
	if st := s.b.Status(ctx, tpl.h); st != vmm.StateExited {
		t.Errorf("template after Snapshot: %s, want exited", st)
	}
	if err := sn.Snapshot(ctx, tpl.h, dir); err == nil {
		t.Error("a second Snapshot into the same dir succeeded")
	}
	before := FileDigests(t, dir, spec.Root.Path)

	// cloneSpec describes a clone: its own root made from the template's
	// (Env.RootDisk), its own work image in the slot, its own MAC.
	n := 0
	cloneSpec := func(t *testing.T) vmm.Spec {
		n++
		c := s.newSpec(t)
		os.Remove(c.Root.Path)
		var err error
		if c.Root, err = s.env.RootDisk(ctx, spec.Root.Path, spec.Root.Format, filepath.Dir(c.RuntimeDir)); err != nil {
			t.Fatal(err)
		}
		c.Disks = []vmm.Disk{{Path: sparseFile(t, filepath.Join(filepath.Dir(c.RuntimeDir), "work.img"), WorkSlotBytes), Format: disk.FormatRaw}}
		c.NICs = []vmm.NIC{{MAC: fmt.Sprintf("02:ba:00:00:01:%02x", n)}}
		c.Restore = &vmm.Snapshot{Dir: dir}
		return c
	}

	t.Run("TwoClones", func(t *testing.T) {
		var vms []*vm
		for i := 0; i < 2; i++ {
			c := cloneSpec(t)
			t0 := time.Now()
			v := s.start(t, ctx, c)
			d := s.ready(t, ctx, v)
			t.Logf("clone %d: Start -> guest answers %v (after Start returned: %v)", i, time.Since(t0).Round(time.Millisecond), d.Round(time.Millisecond))
			vms = append(vms, v)
		}
		for _, v := range vms {
			if st := s.b.Status(ctx, v.h); st != vmm.StateRunning {
				t.Errorf("%s: %s", v.spec.ID, st)
			}
			s.ready(t, ctx, v)
		}
		for _, v := range vms {
			if err := s.b.Kill(ctx, v.h); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("Mismatch", func(t *testing.T) {
		cases := map[string]func(*vmm.Spec){
			"memory":    func(c *vmm.Spec) { c.MemoryMiB += 64 },
			"vcpus":     func(c *vmm.Spec) { c.VCPUs++ },
			"no nic":    func(c *vmm.Spec) { c.NICs = nil },
			"work size": func(c *vmm.Spec) { os.Truncate(c.Disks[0].Path, WorkSlotBytes*2) },
			"no disk":   func(c *vmm.Spec) { c.Disks = nil },
			"missing":   func(c *vmm.Spec) { c.Restore = &vmm.Snapshot{Dir: filepath.Join(base, "nope")} },
		}
		for name, mutate := range cases {
			c := cloneSpec(t)
			mutate(&c)
			h, err := s.b.Start(ctx, c)
			if err == nil {
				_ = s.b.Kill(ctx, h)
			}
			if !errors.Is(err, vmm.ErrSnapshotMismatch) {
				t.Errorf("%s: Start = %v, want ErrSnapshotMismatch", name, err)
			}
			if pids := processesMentioning(c.RuntimeDir); len(pids) > 0 {
				t.Errorf("%s: processes left: %v", name, pids)
			}
			assertNoSockets(t, c.RuntimeDir)
		}
	})

	after := FileDigests(t, dir, spec.Root.Path)
	for p, d := range before {
		if after[p] != d {
			t.Errorf("%s changed while clones ran", p)
		}
	}
	if len(after) != len(before) {
		t.Errorf("snapshot files %v -> %v", before, after)
	}
}

func sparseFile(t testing.TB, path string, size int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return path
}
