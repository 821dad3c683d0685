package daemon

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/banger-sh/banger/client"
	"github.com/banger-sh/banger/internal/config"
	"github.com/banger-sh/banger/internal/network"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/store"
)

// hostileDaemon is an in-process daemon on a temporary BANGER_HOME for
// bad-input tests and fuzzing: no network, no VM boots. Its store holds
// the configured default image (an empty directory, so that a create
// that passes validation fails loading it instead of building one) and
// a stopped VM "idle" (so that requests on a VM reach their own checks).
func hostileDaemon(tb testing.TB) (*client.Client, paths.Layout) {
	tb.Helper()
	l := testLayout(tb)
	if err := l.Ensure(); err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	st, err := store.Open(ctx, l.StoreFile())
	if err != nil {
		tb.Fatal(err)
	}
	dir := filepath.Join(l.ImagesDir(), "0hostile")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := st.CreateImage(ctx, &store.Image{ID: "0hostile", Name: config.Defaults().VM.Image, Dir: dir, Digest: "none", Manifest: []byte("{}")}); err != nil {
		tb.Fatal(err)
	}
	spec := []byte(`{"vcpus":1,"memory_mib":512,"disk_bytes":4294967296,"image_name":"default","backend":"qemu","net":"off"}`)
	if err := st.InsertVM(ctx, &store.VM{ID: "1d1e1d1e", Name: "idle", ImageID: "0hostile", State: "stopped", Spec: spec}); err != nil {
		tb.Fatal(err)
	}
	st.Close()
	c, _ := startDaemon(tb, l)
	return c, l
}

// hostState is what a request could leave behind: the store's rows (as
// the API lists them), the files under the state, runtime and cache
// dirs, network links with banger's prefixes and the test process's
// children. The daemon's own log and database files are left out.
func hostState(tb testing.TB, c *client.Client, l paths.Layout) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b strings.Builder
	vms, err := c.ListVMs(ctx)
	if err != nil {
		tb.Fatalf("list vms: %v", err)
	}
	for _, v := range vms {
		fmt.Fprintf(&b, "vm %s %s\n", v.Name, v.State)
	}
	ims, err := c.ListImages(ctx)
	if err != nil {
		tb.Fatalf("list images: %v", err)
	}
	for _, im := range ims {
		fmt.Fprintf(&b, "image %s\n", im.Name)
	}
	runs, err := c.ListRuns(ctx, 0)
	if err != nil {
		tb.Fatalf("list runs: %v", err)
	}
	for _, r := range runs {
		fmt.Fprintf(&b, "run %s %s\n", r.ID, r.State)
	}
	skip := map[string]bool{l.StoreFile(): true, l.StoreFile() + "-wal": true, l.StoreFile() + "-shm": true, l.DaemonLog(): true, l.DaemonOutput(): true}
	var files []string
	for _, root := range []string{l.State, l.Runtime, l.Cache} {
		// Every file, and every directory below the top-level ones (which
		// the daemon makes on first use: spool, uploads, tmp, ...).
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			rel, _ := filepath.Rel(root, p)
			if err == nil && !skip[p] && (!d.IsDir() || strings.Contains(rel, "/")) {
				files = append(files, p)
			}
			return nil
		})
	}
	sort.Strings(files)
	for _, f := range files {
		fmt.Fprintf(&b, "file %s\n", f)
	}
	links, _ := network.ListLinks()
	cfg := config.Defaults()
	for _, k := range links {
		n := k.Attrs().Name
		if strings.HasPrefix(n, cfg.Network.TapPrefix) || n == cfg.Network.Bridge || strings.HasPrefix(n, "banger") {
			fmt.Fprintf(&b, "link %s\n", n)
		}
	}
	fmt.Fprintf(&b, "children %s\n", strings.Join(children(), " "))
	for _, f := range heldFiles(l) {
		fmt.Fprintf(&b, "open %s\n", f)
	}
	return b.String()
}

// heldFiles lists the files outside the daemon's own directories that this
// process (the daemon's, in these tests) holds open: uploads it kept.
func heldFiles(l paths.Layout) []string {
	fds, _ := filepath.Glob("/proc/self/fd/*")
	var out []string
	for _, fd := range fds {
		target, err := os.Readlink(fd)
		if err != nil || !strings.HasPrefix(target, "/") || strings.HasPrefix(target, "/dev/") || strings.HasPrefix(target, "/proc/") || strings.HasPrefix(target, "/sys/") {
			continue
		}
		own := false
		for _, root := range []string{l.State, l.Runtime, l.Cache, l.Config} {
			if strings.HasPrefix(target, root+"/") {
				own = true
			}
		}
		if fi, err := os.Stat(fd); err == nil && fi.Mode().IsRegular() && !own {
			out = append(out, target)
		}
	}
	sort.Strings(out)
	return out
}

// children lists the pids of this process's children (every thread's).
func children() []string {
	var out []string
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", os.Getpid()))
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		out = append(out, strings.Fields(string(b))...)
	}
	sort.Strings(out)
	return out
}

// waitChildren waits (a little) for children started by a request to be
// reaped, so that a snapshot does not catch a git that is exiting.
func stableState(tb testing.TB, c *client.Client, l paths.Layout, want string) string {
	tb.Helper()
	var got string
	for i := 0; i < 50; i++ {
		if got = hostState(tb, c, l); got == want {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
	return got
}
