package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/banger-sh/banger/internal/errdefs"
)

func open(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestFreshDatabaseGetsEveryMigration(t *testing.T) {
	s := open(t)
	ms, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.SchemaVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if v != len(ms) || v < 2 {
		t.Fatalf("schema version %d, want %d (>= 2)", v, len(ms))
	}
	var mode string
	if err := s.db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q, %v; want wal", mode, err)
	}
}

// TestUpgradeFromPreviousKeepsRows builds a database as the previous
// release left it (every migration but the last), fills it, then opens it
// with this release.
func TestUpgradeFromPreviousKeepsRows(t *testing.T) {
	ctx := context.Background()
	ms, _ := Migrations()
	path := filepath.Join(t.TempDir(), "state.db")
	old, err := OpenAt(ctx, path, len(ms)-1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.db.Exec(`INSERT INTO images (id, name, dir, digest, created_at, updated_at) VALUES ('i1','default','/x','d','t','t')`); err != nil {
		t.Fatal(err)
	}
	if _, err := old.db.Exec(`INSERT INTO vms (id, name, image_id, state, created_at, updated_at) VALUES ('v1','dev','i1','stopped','t','t')`); err != nil {
		t.Fatal(err)
	}
	old.Close()

	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, _ := s.SchemaVersion(ctx); v != len(ms) {
		t.Fatalf("after upgrade version %d, want %d", v, len(ms))
	}
	vm, err := s.GetVM(ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	if vm.ImageID != "i1" || vm.State != "stopped" || vm.LastError != "" {
		t.Fatalf("vm after upgrade: %+v", vm)
	}
}

func TestNewerSchemaIsRefused(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	s.db.Exec("PRAGMA user_version = 999")
	s.Close()
	if _, err := Open(ctx, path); err == nil {
		t.Fatal("opening a newer schema succeeded")
	}
}

func TestVMNameIsReservedOnce(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	var wg sync.WaitGroup
	errs := make([]error, 10)
	for i := range errs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = s.InsertVM(ctx, &VM{ID: string(rune('a' + i)), Name: "dev", State: "creating"})
		}(i)
	}
	wg.Wait()
	wins := 0
	for _, err := range errs {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, errdefs.ErrAlreadyExists):
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d creates of one name won, want 1", wins)
	}
}

func TestVMRoundTripAndNotFound(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	im := &Image{ID: "img1", Name: "default", Dir: "/d", Digest: "sha256:x"}
	if err := s.CreateImage(ctx, im); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateImage(ctx, &Image{ID: "img2", Name: "default"}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("duplicate image: %v", err)
	}
	vm := &VM{ID: "v1", Name: "dev", ImageID: "img1", State: "creating", Spec: []byte(`{"vcpus":2}`)}
	if err := s.InsertVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	vm.State = "running"
	vm.Handle = []byte(`{"pid":42}`)
	if err := s.UpdateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != "running" || string(got.Handle) != `{"pid":42}` || string(got.Spec) != `{"vcpus":2}` {
		t.Fatalf("got %+v", got)
	}
	if err := s.DeleteImage(ctx, "img1"); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("delete image in use: %v", err)
	}
	users, _ := s.VMsUsingImage(ctx, "img1")
	if len(users) != 1 || users[0].Name != "dev" {
		t.Fatalf("users = %v", users)
	}
	if err := s.DeleteVM(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetVM(ctx, "dev"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	if err := s.DeleteImage(ctx, "img1"); err != nil {
		t.Fatal(err)
	}
}

func TestCheck(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := Check(ctx, filepath.Join(dir, "missing.db")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing db: %v", err)
	}
	bad := filepath.Join(dir, "bad.db")
	os.WriteFile(bad, []byte("this is not a database, just text that is long enough to look like a header"), 0o600)
	if err := Check(ctx, bad); err == nil {
		t.Fatal("garbage db passed the check")
	}
	s := open(t)
	_ = s
	good := filepath.Join(dir, "good.db")
	g, err := Open(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	g.Close()
	if err := Check(ctx, good); err != nil {
		t.Fatalf("good db: %v", err)
	}
}
