package workspace

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

// hostileConfig gives the fixture repo config that must never reach the
// guest: a remote with a credential, a credential helper, a hook, an alias.
func hostileConfig(t *testing.T, r string) {
	git(t, r, "remote", "add", "origin", "https://user:SECRET-TOKEN@example.com/repo.git")
	git(t, r, "config", "credential.helper", "store --file=/SECRET-HELPER")
	git(t, r, "config", "alias.boom", "!echo SECRET-ALIAS")
	write(t, filepath.Join(r, ".git", "hooks"), "post-checkout", "#!/bin/sh\necho SECRET-HOOK\n", 0o755)
	write(t, filepath.Join(r, ".git", "info"), "exclude", "*.host-excluded\n", 0o644)
	write(t, r, "x.host-excluded", "excluded by info/exclude\n", 0o644)
}

func TestBuildDiskGuestStatus(t *testing.T) {
	r := fixture(t)
	hostileConfig(t, r)
	ctx := tctx(t)
	for _, untracked := range []bool{false, true} {
		set, err := List(ctx, r, ListOptions{IncludeUntracked: untracked})
		if err != nil {
			t.Fatal(err)
		}
		info := buildKeep(t, r, set)
		g := info.Staging
		hostStatus := status(t, r)
		if !untracked {
			// Untracked files were not shipped: they are absent, not
			// untracked, in the guest.
			var keep []string
			for _, l := range strings.Split(hostStatus, "\n") {
				if !strings.HasPrefix(l, "?? ") {
					keep = append(keep, l)
				}
			}
			hostStatus = strings.Join(keep, "\n")
		}
		if got := status(t, g); got != hostStatus {
			t.Fatalf("untracked=%v: guest status\n%q\nhost status\n%q", untracked, got, hostStatus)
		}
		if got, want := git(t, g, "log", "-1", "--format=%H %s"), git(t, r, "log", "-1", "--format=%H %s"); got != want {
			t.Errorf("guest HEAD %q, host %q", got, want)
		}
		if got := strings.TrimSpace(git(t, g, "symbolic-ref", "HEAD")); got != "refs/heads/main" {
			t.Errorf("guest branch %q", got)
		}
		// The diff of the host's uncommitted state is available in the guest.
		if got, want := git(t, g, "diff", "HEAD", "--", "b.txt", "staged.txt"), git(t, r, "diff", "HEAD", "--", "b.txt", "staged.txt"); got != want {
			t.Errorf("guest diff HEAD\n%s\nhost\n%s", got, want)
		}
		// Nothing of the host's config, hooks or credentials.
		gd := filepath.Join(g, ".git")
		if out, err := system.Run(ctx, "grep", "-r", "-l", "SECRET", gd); err == nil {
			t.Errorf("host secrets in the guest .git: %s", out)
		}
		if _, err := os.Stat(filepath.Join(gd, "hooks")); err == nil {
			t.Errorf("hooks directory shipped")
		}
		cfg, _ := os.ReadFile(filepath.Join(gd, "config"))
		if strings.Contains(string(cfg), "remote") || !strings.Contains(string(cfg), "checkStat = minimal") {
			t.Errorf("guest config:\n%s", cfg)
		}
		// The Info file.
		var got Info
		data, err := os.ReadFile(filepath.Join(gd, InfoFile))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(data, &got); err != nil {
			t.Fatal(err)
		}
		if got.Base != info.Base || got.Files != len(set.Files) || got.Base.Head != strings.TrimSpace(git(t, r, "rev-parse", "HEAD")) {
			t.Errorf("info %+v, disk %+v", got, info.Info)
		}
		if got := strings.TrimSpace(git(t, g, "rev-parse", BaseRef+"^{tree}")); got != info.Base.Tree {
			t.Errorf("guest base tree %s, info %s", got, info.Base.Tree)
		}
		// Shallow: only HEAD's objects, history not shipped.
		if n := strings.TrimSpace(git(t, g, "rev-list", "--count", "HEAD")); n != "1" {
			t.Errorf("guest history: %s commits", n)
		}
		if out := git(t, g, "fsck", "--no-dangling"); strings.Contains(out, "missing") {
			t.Errorf("fsck: %s", out)
		}
		checkImage(t, info, status(t, g))
	}
}

func TestBuildDiskSize(t *testing.T) {
	r := fixture(t)
	ctx := tctx(t)
	set, err := List(ctx, r, ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(t.TempDir(), "w.ext4")
	if _, err := BuildDisk(ctx, r, set, DiskOptions{Dest: dest, Size: 1 << 20}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("1 MiB disk: %v", err)
	}
	if _, err := os.Stat(dest); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a failed build left %s: %v", dest, err)
	}
	info, err := BuildDisk(ctx, r, set, DiskOptions{Dest: dest, Size: 200 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dest); err != nil || fi.Size() != 200<<20 || info.Size != 200<<20 {
		t.Fatalf("image %v %v, info size %d", fi, err, info.Size)
	}
	info, err = BuildDisk(ctx, r, set, DiskOptions{Dest: dest})
	if err != nil {
		t.Fatal(err)
	}
	if info.Size < minDiskSize || info.Size%mib != 0 || info.Staging != "" {
		t.Fatalf("auto size %d, staging %q", info.Size, info.Staging)
	}
	noStagingLeft(t, r)
	// No temporary image left beside dest.
	if entries, _ := os.ReadDir(filepath.Dir(dest)); len(entries) != 1 {
		t.Fatalf("dest dir: %v", entries)
	}
}

// noStagingLeft waits for the background removal of staging directories.
func noStagingLeft(t *testing.T, r string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries, _ := os.ReadDir(filepath.Join(r, ".git", "banger", "tmp"))
		if len(entries) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("staging left: %v", entries)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkImage looks into the ext4 image without mounting: debugfs lists its
// root, dumps it, and the dump's git status must equal want.
func checkImage(t *testing.T, info *DiskInfo, want string) {
	t.Helper()
	ctx := tctx(t)
	out, err := system.Run(ctx, "debugfs", "-R", "ls -l /", info.Path)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{".git", "a.txt", "run.sh", "link-to-a"} {
		if !strings.Contains(string(out), name) {
			t.Errorf("image root lacks %s:\n%s", name, out)
		}
	}
	stat, err := system.Run(ctx, "debugfs", "-R", "stat /.git", info.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(stat), "User:     0   Group:     0") {
		t.Errorf(".git not owned by root in the image:\n%s", stat)
	}
	dump := filepath.Join(t.TempDir(), "dump")
	os.Mkdir(dump, 0o755)
	if _, err := system.Run(ctx, "debugfs", "-R", "rdump / "+dump, info.Path); err != nil {
		t.Fatal(err)
	}
	if got := status(t, dump); got != want {
		t.Errorf("status of the image's dump:\n%q\nwant\n%q", got, want)
	}
	sameState(t, "image vs staging", treeState(t, dump), treeState(t, info.Staging))
	if fi, err := os.Lstat(filepath.Join(dump, "link-outside")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("symlink not kept in the image: %v %v", fi, err)
	}
}

func TestTarStream(t *testing.T) {
	r := fixture(t)
	ctx := tctx(t)
	set, err := List(ctx, r, ListOptions{IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	info, err := TarStream(ctx, r, set, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if info.Base.Head != strings.TrimSpace(git(t, r, "rev-parse", "HEAD")) || info.Base.Tree == "" {
		t.Fatalf("info %+v", info)
	}
	// Entries are owned by root and directories come first.
	tr := tar.NewReader(bytes.NewReader(buf.Bytes()))
	dirs := map[string]bool{"": true}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s owned by %d:%d", h.Name, h.Uid, h.Gid)
		}
		name := strings.TrimSuffix(h.Name, "/")
		if !dirs[parentDir(name)] {
			t.Errorf("%s before its directory", h.Name)
		}
		if h.Typeflag == tar.TypeDir {
			dirs[name] = true
		}
	}
	g := filepath.Join(t.TempDir(), "guest")
	os.Mkdir(g, 0o755)
	if _, err := system.RunOpts(ctx, system.Opts{Dir: g, Stdin: bytes.NewReader(buf.Bytes())}, "tar", "-x", "-p", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if got, want := status(t, g), status(t, r); got != want {
		t.Fatalf("guest status\n%q\nhost\n%q", got, want)
	}
	host := treeState(t, r)
	for k := range host {
		if strings.HasSuffix(k, ".log") || strings.HasPrefix(k, "build/") || k == "x.host-excluded" {
			delete(host, k)
		}
	}
	sameState(t, "tar vs host", treeState(t, g), host)
	noStagingLeft(t, r)
}

// TestManyFiles ships a 10,000-file tree and reports the time taken.
func TestManyFiles(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	r := newRepo(t)
	for i := 0; i < 10000; i++ {
		write(t, r, filepathFor(i), strings.Repeat("x", i%300)+"\n", 0o644)
	}
	git(t, r, "add", "-A")
	git(t, r, "commit", "-q", "-m", "many")
	write(t, r, filepathFor(5), "changed\n", 0o644)
	ctx := tctx(t)
	t0 := time.Now()
	set, err := List(ctx, r, ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tList := time.Since(t0)
	if len(set.Files) != 10000 {
		t.Fatalf("%d files", len(set.Files))
	}
	t0 = time.Now()
	info := buildKeep(t, r, set)
	tBuild := time.Since(t0)
	t.Logf("10,000 files: List %v, BuildDisk %v (stage %v, .git %v, mkfs %v), image %d MiB",
		tList.Round(time.Millisecond), tBuild.Round(time.Millisecond), info.StageTime.Round(time.Millisecond),
		info.GitTime.Round(time.Millisecond), info.MkfsTime.Round(time.Millisecond), info.Size>>20)
	if got, want := status(t, info.Staging), status(t, r); got != want {
		t.Fatalf("guest status %q, host %q", got, want)
	}
	guest := filepath.Join(t.TempDir(), "guest")
	copyTree(t, info.Staging, guest)
	for i := 0; i < 1000; i++ {
		write(t, guest, filepathFor(i*10), "edited in the guest\n", 0o644)
	}
	t0 = time.Now()
	p, _ := runExport(t, guest, 0)
	t.Logf("export of 1,000 changed files: %v", time.Since(t0).Round(time.Millisecond))
	if len(p.Changes) != 1000 {
		t.Fatalf("%d changes", len(p.Changes))
	}
}

func filepathFor(i int) string {
	return filepath.Join("d"+itoa(i/1000), "e"+itoa(i/100%10), "f"+itoa(i)+".txt")
}

func itoa(i int) string { return strings.TrimSpace(strings.Repeat(" ", 0) + fmtInt(i)) }

func fmtInt(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}
