package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/errdefs"
)

// TestUploadKeepsTheDescriptor: a file handed over as a descriptor is held
// by the daemon as that descriptor (nothing is copied until a VM takes it,
// no file is made), under a token only the same user can use, once; the
// client's file stays the client's.
func TestUploadKeepsTheDescriptor(t *testing.T) {
	l := testLayout(t)
	cl, _ := startDaemon(t, l)
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "work.ext4")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	f.WriteAt([]byte("head"), 0)
	f.WriteAt([]byte("tail"), 64<<20-4)
	f.Close()
	ro, _ := os.Open(src)
	up, err := cl.Upload(ctx, ro)
	ro.Close()
	if err != nil {
		t.Fatal(err)
	}
	if up.Token == "" || up.Bytes != 64<<20 {
		t.Fatalf("upload %+v", up)
	}
	// The source is the client's: untouched, still there; the daemon made
	// no file of it and holds it open.
	if _, err := os.Stat(src); err != nil {
		t.Fatal(err)
	}
	if copies, _ := filepath.Glob(filepath.Join(l.UploadsDir(), "*")); len(copies) != 0 {
		t.Fatalf("copies %v", copies)
	}
	if held := heldFiles(l); len(held) != 1 || held[0] != src {
		t.Fatalf("held %v, want %s", held, src)
	}
	// Another user cannot take it; the owner can, once, and reads the
	// file through it.
	dm := &uploads{m: map[string]*upload{}}
	g, _ := os.Open(src)
	dm.m[up.Token] = &upload{f: g, uid: 4242, expires: time.Now().Add(time.Minute)}
	if _, err := dm.take(up.Token, 1000); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("another user took the upload: %v", err)
	}
	got, err := dm.take(up.Token, 4242)
	if err != nil {
		t.Fatalf("take: %v", err)
	}
	b := make([]byte, 4)
	if _, err := got.ReadAt(b, 64<<20-4); err != nil || string(b) != "tail" {
		t.Fatalf("read through the upload: %q %v", b, err)
	}
	got.Close()
	if _, err := dm.take(up.Token, 4242); err == nil {
		t.Fatal("an upload was taken twice")
	}
	// Unused uploads are closed when they expire.
	h, _ := os.Open(src)
	dm.m["old"] = &upload{f: h, uid: 4242, expires: time.Now().Add(-time.Second)}
	dm.mu.Lock()
	dm.sweepLocked()
	dm.mu.Unlock()
	if _, err := h.Stat(); !errors.Is(err, os.ErrClosed) || len(dm.m) != 0 {
		t.Fatalf("an expired upload is still held: %v", err)
	}
}

// TestUploadsPerUserBounded: a user cannot make the daemon hold more than
// maxUploadsPerUser descriptors.
func TestUploadsPerUserBounded(t *testing.T) {
	l := testLayout(t)
	cl, _ := startDaemon(t, l)
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "d")
	os.WriteFile(src, []byte("x"), 0o600)
	f, _ := os.Open(src)
	defer f.Close()
	for i := 0; i < maxUploadsPerUser; i++ {
		if _, err := cl.Upload(ctx, f); err != nil {
			t.Fatalf("upload %d: %v", i, err)
		}
	}
	if _, err := cl.Upload(ctx, f); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("upload past the bound: %v", err)
	}
	n := 0
	for _, p := range heldFiles(l) {
		if p == src {
			n++
		}
	}
	if n != maxUploadsPerUser+1 { // and the test's own
		t.Fatalf("%d descriptors of the file held, want %d", n, maxUploadsPerUser+1)
	}
}

// TestUploadRefusesWhatIsNotAFileToRead: write-only descriptors, FIFOs and
// directories are refused, and nothing is left: no file, no descriptor.
func TestUploadRefusesWhatIsNotAFileToRead(t *testing.T) {
	l := testLayout(t)
	cl, _ := startDaemon(t, l)
	ctx := context.Background()
	dir := t.TempDir()
	wo, _ := os.OpenFile(filepath.Join(dir, "wo"), os.O_CREATE|os.O_WRONLY, 0o600)
	wo.Truncate(1 << 20)
	defer wo.Close()
	fifo := filepath.Join(dir, "fifo")
	syscall.Mkfifo(fifo, 0o600)
	ff, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ff.Close()
	dd, _ := os.Open(dir)
	defer dd.Close()
	empty, _ := os.Create(filepath.Join(dir, "empty"))
	defer empty.Close()
	before := strings.Join(heldFiles(l), " ") // the test's own
	for name, f := range map[string]*os.File{"write-only": wo, "fifo": ff, "directory": dd, "empty": empty} {
		if _, err := cl.Upload(ctx, f); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(l.UploadsDir(), "*")); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
	if held := strings.Join(heldFiles(l), " "); held != before {
		t.Fatalf("held open: %v (before: %v)", held, before)
	}
}

// TestCreateTakesNoClientPath: a create or run request that names a work
// disk by path (the old API) is refused before anything happens, and the
// file is untouched; an unknown token is refused too.
func TestCreateTakesNoClientPath(t *testing.T) {
	l := testLayout(t)
	cl, _ := startDaemon(t, l)
	ctx := context.Background()
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("precious"), 0o600)
	body := `{"name":"x","workspace":{"disk":"` + victim + `","path":"/root/repo"}}`
	err := cl.Stream(ctx, "POST", "/v1/vms", rawJSON(body), nil, nil)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "disk") {
		t.Fatalf("create with a disk path: %v", err)
	}
	_, err = cl.CreateVM(ctx, api.CreateVMRequest{Name: "x", Workspace: &api.WorkspaceSpec{Upload: "deadbeef"}}, nil)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "upload") {
		t.Fatalf("create with an unknown upload: %v", err)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "precious" {
		t.Fatalf("victim: %q %v", b, err)
	}
	if vms, _ := cl.ListVMs(ctx); len(vms) != 0 {
		t.Fatalf("vms %v", vms)
	}
	// Not a unix-socket peer: no credentials, no upload.
	if p := peerOf(connContext(ctx, &net.TCPConn{})); p.ok {
		t.Fatal("credentials from a TCP conn")
	}
}

func rawJSON(s string) json.RawMessage { return json.RawMessage(s) }
