package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/errdefs"
)

// TestBuildCancelDuringDebootstrap cancels a real build while debootstrap
// runs and checks that nothing is left: no scratch directory, no
// destination, no process working in the scratch tree, no mount.
func TestBuildCancelDuringDebootstrap(t *testing.T) {
	if testing.Short() {
		t.Skip("runs debootstrap")
	}
	base := t.TempDir()
	tmpDir := filepath.Join(base, "tmp")
	dest := filepath.Join(base, "images", "cancelled")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var scratch string
	var chrooted atomic.Bool
	o := BuildOptions{
		Name:        "cancelled",
		NoTreeCache: true,                                   // debootstrap must run
		CacheDir:    filepath.Join(testCacheDir(), "build"), // warm: reach debootstrap fast
		TmpDir:      tmpDir,
		Dest:        dest,
		Progress: func(p api.Progress) {
			phase, detail := p.Phase, p.Detail
			t.Logf("%s: %s", phase, detail)
			if phase == "debootstrap" {
				entries, _ := os.ReadDir(tmpDir)
				if len(entries) == 1 {
					scratch = filepath.Join(tmpDir, entries[0].Name())
				}
				// Cancel once debootstrap runs dpkg chrooted in the tree:
				// those are the processes a plain kill would orphan.
				go func() {
					deadline := time.Now().Add(90 * time.Second)
					for time.Now().Before(deadline) {
						if pids := processesUsing(filepath.Join(scratch, "rootfs")); len(pids) > 0 {
							t.Logf("cancelling with %d processes chrooted in the tree", len(pids))
							chrooted.Store(true)
							break
						}
						time.Sleep(50 * time.Millisecond)
					}
					cancel()
				}()
			}
		},
	}
	start := time.Now()
	_, err := Build(ctx, o)
	t.Logf("Build returned after %s: %v", time.Since(start).Round(time.Millisecond), err)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if scratch == "" {
		t.Fatal("never saw the scratch directory")
	}
	if !chrooted.Load() {
		t.Error("debootstrap never ran a process chrooted in the tree before the deadline")
	}
	entries, err := os.ReadDir(tmpDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("left in scratch dir: %s", e.Name())
	}
	if _, err := os.Lstat(dest); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("destination exists after cancel: %v", err)
	}
	if _, err := os.Lstat(filepath.Dir(dest)); err == nil {
		if entries, _ := os.ReadDir(filepath.Dir(dest)); len(entries) > 0 {
			t.Errorf("images dir not empty: %v", entries)
		}
	}
	// Nothing keeps running in (or mounted under) the removed tree.
	time.Sleep(200 * time.Millisecond)
	if pids := processesUsing(scratch); len(pids) > 0 {
		t.Errorf("processes still using %s: %v", scratch, pids)
	}
	if mounts, err := mountsUnder(scratch); err != nil || len(mounts) > 0 {
		t.Errorf("mounts under %s: %v %v", scratch, mounts, err)
	}
}

func TestBuildRejectsExistingDest(t *testing.T) {
	base := t.TempDir()
	dest := filepath.Join(base, "img")
	if err := os.Mkdir(dest, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Build(context.Background(), BuildOptions{Name: "x", CacheDir: filepath.Join(base, "cache"), Dest: dest})
	if err == nil {
		t.Fatal("no error for an existing destination")
	}
	entries, _ := os.ReadDir(base)
	if len(entries) != 1 {
		t.Errorf("left behind: %v", entries)
	}
}

func TestBuildRejectsUnknownSuite(t *testing.T) {
	base := t.TempDir()
	_, err := Build(context.Background(), BuildOptions{Name: "x", Suite: "nosuchsuite", CacheDir: filepath.Join(base, "cache"), Dest: filepath.Join(base, "img")})
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("err = %v, want invalid argument", err)
	}
	assertOnly(t, base)
}

func TestBuildOptionsValidation(t *testing.T) {
	for _, o := range []BuildOptions{
		{Name: "", CacheDir: "/c", Dest: "/d"},
		{Name: "../x", CacheDir: "/c", Dest: "/d"},
		{Name: "ok", Packages: []string{"git", "--foo"}, CacheDir: "/c", Dest: "/d"},
		{Name: "ok", Packages: []string{"a,b"}, CacheDir: "/c", Dest: "/d"},
		{Name: "ok", Suite: "bookworm main", CacheDir: "/c", Dest: "/d"},
		{Name: "ok", SizeBytes: 1 << 20, CacheDir: "/c", Dest: "/d"},
		{Name: "ok", Dest: "/d"},
		{Name: "ok", Mirror: "--foo", CacheDir: "/c", Dest: "/d"},
		{Name: "ok", Mirror: "deb.debian.org/debian", CacheDir: "/c", Dest: "/d"},
	} {
		if _, err := o.withDefaults(); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
	n, err := BuildOptions{Name: "ok", CacheDir: "c", Dest: "/x/d", SizeBytes: 3<<30 + 5}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if n.Suite != DefaultSuite || len(n.Packages) != len(defaultPackages) || n.SizeBytes != 3<<30+rootfsAlign || n.TmpDir != "/x" || !filepath.IsAbs(n.CacheDir) || n.Mirror == "" {
		t.Errorf("defaults: %+v", n)
	}
	k1, _ := BuildOptions{}.Key()
	k2, _ := BuildOptions{Packages: DefaultPackages(), Name: "other", Dest: "/elsewhere"}.Key()
	k3, _ := BuildOptions{Packages: []string{"git"}}.Key()
	if k1 == "" || k1 != k2 || k1 == k3 {
		t.Errorf("keys: %q %q %q", k1, k2, k3)
	}
}
