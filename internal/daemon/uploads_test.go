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

// TestUploadCopiesFromTheDescriptor: a file handed over as a descriptor
// arrives as the daemon's own copy (data and holes alike), under a token
// only the same user can use, once.
func TestUploadCopiesFromTheDescriptor(t *testing.T) {
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
	defer ro.Close()
	up, err := cl.Upload(ctx, ro)
	if err != nil {
		t.Fatal(err)
	}
	if up.Token == "" || up.Bytes != 64<<20 {
		t.Fatalf("upload %+v", up)
	}
	// The source is the client's: untouched, still there.
	if _, err := os.Stat(src); err != nil {
		t.Fatal(err)
	}
	d := l.UploadsDir()
	copies, _ := filepath.Glob(filepath.Join(d, "upload-*"))
	if len(copies) != 1 {
		t.Fatalf("copies %v", copies)
	}
	b, _ := os.ReadFile(copies[0])
	if len(b) != 64<<20 || string(b[:4]) != "head" || string(b[len(b)-4:]) != "tail" {
		t.Fatalf("copy differs (%d bytes)", len(b))
	}
	var st syscall.Stat_t
	syscall.Stat(copies[0], &st)
	if st.Blocks*512 > 1<<20 {
		t.Errorf("the copy is not sparse: %d bytes allocated", st.Blocks*512)
	}
	// Another user cannot take it; the owner can, once.
	dm := &uploads{dir: d, m: map[string]*upload{}}
	dm.m[up.Token] = &upload{path: copies[0], uid: 4242, expires: time.Now().Add(time.Minute)}
	if _, err := dm.take(up.Token, 1000); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("another user took the upload: %v", err)
	}
	if p, err := dm.take(up.Token, 4242); err != nil || p != copies[0] {
		t.Fatalf("take: %q %v", p, err)
	}
	if _, err := dm.take(up.Token, 4242); err == nil {
		t.Fatal("an upload was taken twice")
	}
}

// TestUploadRefusesWhatIsNotAFileToRead: write-only descriptors, FIFOs and
// directories are refused, and nothing is left in the uploads directory.
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
	for name, f := range map[string]*os.File{"write-only": wo, "fifo": ff, "directory": dd, "empty": empty} {
		if _, err := cl.Upload(ctx, f); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(l.UploadsDir(), "*")); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
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
