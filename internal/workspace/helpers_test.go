package workspace

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/system"
)

// TestMain isolates git from the host's configuration: no global or system
// config, no global excludes, a fixed identity.
func TestMain(m *testing.M) {
	xdg, err := os.MkdirTemp("", "banger-ws-xdg-")
	if err != nil {
		panic(err)
	}
	for k, v := range map[string]string{
		"GIT_CONFIG_GLOBAL":   "/dev/null",
		"GIT_CONFIG_NOSYSTEM": "1",
		"XDG_CONFIG_HOME":     xdg,
		"GIT_AUTHOR_NAME":     "Test",
		"GIT_AUTHOR_EMAIL":    "test@example.com",
		"GIT_COMMITTER_NAME":  "Test",
		"GIT_COMMITTER_EMAIL": "test@example.com",
		"GIT_AUTHOR_DATE":     "",
	} {
		if v == "" {
			os.Unsetenv(k)
		} else {
			os.Setenv(k, v)
		}
	}
	for _, k := range []string{"GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"} {
		os.Unsetenv(k)
	}
	code := m.Run()
	os.RemoveAll(xdg)
	os.Exit(code)
}

func tctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// git runs git in dir and returns its stdout.
func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, err := system.RunOpts(context.Background(), system.Opts{Dir: dir}, append([]string{"git", "-c", "init.defaultBranch=main", "-c", "protocol.file.allow=always"}, args...)...)
	if err != nil {
		t.Fatalf("git %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

// gitMayFail runs git in dir and ignores its exit status.
func gitMayFail(t *testing.T, dir string, args ...string) {
	t.Helper()
	system.RunOpts(context.Background(), system.Opts{Dir: dir}, append([]string{"git"}, args...)...)
}

func gitEnv(t *testing.T, dir string, env []string, args ...string) string {
	t.Helper()
	out, err := system.RunOpts(context.Background(), system.Opts{Dir: dir, Env: env}, append([]string{"git"}, args...)...)
	if err != nil {
		t.Fatalf("git %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

func newRepo(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	git(t, dir, "init", "-q")
	git(t, dir, "config", "gc.auto", "0")
	return dir
}

func write(t *testing.T, root, name, content string, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(root, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Remove(p)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, root, target, name string) {
	t.Helper()
	p := filepath.Join(root, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Remove(p)
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

// treeState is a text dump of a tree (outside .git): one line per file
// with its type, exec bit and content hash or link target.
func treeState(t *testing.T, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == ".git" {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			m[rel] = "link " + target
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			m[rel] = fmt.Sprintf("file %o %s", fi.Mode().Perm()&0o111, hex.EncodeToString(sum[:8]))
		default:
			m[rel] = "other"
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func diffStates(a, b map[string]string) string {
	var out []string
	for k, v := range a {
		if b[k] != v {
			out = append(out, fmt.Sprintf("%q: %q vs %q", k, v, b[k]))
		}
	}
	for k, v := range b {
		if _, ok := a[k]; !ok {
			out = append(out, fmt.Sprintf("%q: missing vs %q", k, v))
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

func sameState(t *testing.T, what string, a, b map[string]string) {
	t.Helper()
	if d := diffStates(a, b); d != "" {
		t.Fatalf("%s: trees differ:\n%s", what, d)
	}
}

// status is git status in a machine-readable form, untracked files listed
// one by one.
func status(t *testing.T, dir string) string {
	t.Helper()
	out := git(t, dir, "status", "--porcelain=v1", "-z", "--untracked-files=all")
	recs := strings.Split(strings.TrimSuffix(out, "\x00"), "\x00")
	sort.Strings(recs)
	return strings.Join(recs, "\n")
}

// copyTree copies src to dst with cp -a (a real copy, not links: what
// the guest sees is its own disk).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	if _, err := system.Run(context.Background(), "cp", "-a", src, dst); err != nil {
		t.Fatal(err)
	}
}

func paths(set *FileSet) []string {
	var out []string
	for _, f := range set.Files {
		out = append(out, f.Path)
	}
	return out
}

func lsFiles(t *testing.T, dir string, args ...string) []string {
	out := git(t, dir, append([]string{"ls-files", "-z"}, args...)...)
	if out == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(out, "\x00"), "\x00")
}

func equalStrings(a, b []string) bool {
	return strings.Join(a, "\x00") == strings.Join(b, "\x00")
}

// laterSecond waits for the next whole second. The guest compares size and
// whole-second mtime (core.checkStat=minimal): an edit to the same size in
// the very second a file was shipped would be invisible, as with git itself
// on filesystems without sub-second times. A real guest edits seconds
// after the shipping at the earliest (it boots first); tests that edit at
// once wait for the next second to model that.
func laterSecond() {
	now := time.Now()
	time.Sleep(now.Truncate(time.Second).Add(time.Second + 10*time.Millisecond).Sub(now))
}

// runExport runs ExportCommand in dir (the simulated guest) and parses it.
func runExport(t *testing.T, dir string, limit int64) (*Patch, []byte) {
	t.Helper()
	var out bytes.Buffer
	if _, err := system.RunOpts(tctx(t), system.Opts{Stdout: &out}, ExportCommand(dir)...); err != nil {
		t.Fatalf("export: %v", err)
	}
	p, err := ParsePatch(bytes.NewReader(out.Bytes()), limit)
	if err != nil {
		t.Fatalf("parse export: %v\n%s", err, out.String())
	}
	return p, out.Bytes()
}

func buildKeep(t *testing.T, repo string, set *FileSet) *DiskInfo {
	t.Helper()
	info, err := BuildDisk(tctx(t), repo, set, DiskOptions{Dest: filepath.Join(t.TempDir(), "work.ext4"), KeepStaging: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(info.Staging)) })
	return info
}
