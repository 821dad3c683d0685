package agent

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

func wsFile(t *testing.T, dir, name, content string, mode os.FileMode, mtime time.Time) {
	t.Helper()
	p := filepath.Join(dir, name)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, mode)
	os.Chtimes(p, mtime, mtime)
}

// A workspace scanned over the real protocol: every kind of record, then
// the changed files fetched as a tar.
func TestScanWorkspace(t *testing.T) {
	p := startPair(t, ServeOptions{})
	dir := t.TempDir()
	old := time.Unix(1700000000, 0)
	wsFile(t, dir, "same.txt", "same\n", 0o644, old)
	wsFile(t, dir, "edited.txt", "edited in the guest\n", 0o644, time.Now())
	wsFile(t, dir, "chmod.sh", "x\n", 0o755, old)
	wsFile(t, dir, "sub/new.txt", "new\n", 0o644, time.Now())
	wsFile(t, dir, ".gitignore", "*.log\n", 0o644, old)
	wsFile(t, dir, "d/.gitattributes", "", 0o644, old)
	wsFile(t, dir, ".git/info/exclude", "x\n", 0o644, old)
	wsFile(t, dir, "wasfile/now-a-dir.txt", "y\n", 0o644, time.Now())
	os.Symlink("same.txt", filepath.Join(dir, "link"))
	man := fmt.Sprintf("100644 5 %d same.txt\x00100644 4 %d edited.txt\x00100644 2 %d chmod.sh\x00"+
		"100644 6 %d .gitignore\x00100644 0 %d d/.gitattributes\x00100644 3 %d gone.txt\x00100644 1 %d wasfile\x00",
		old.Unix(), old.Unix(), old.Unix(), old.Unix(), old.Unix(), old.Unix(), old.Unix())
	os.WriteFile(filepath.Join(dir, ".git", ManifestFile), []byte(man), 0o644)

	recs, giveUp, err := p.client.ScanWorkspace(tctx(t), dir, 100)
	if err != nil || giveUp != "" {
		t.Fatalf("scan: %v %q", err, giveUp)
	}
	var got []string
	for _, r := range recs {
		got = append(got, fmt.Sprintf("%c %o %s", r.Kind, r.Mode, r.Path))
	}
	sort.Strings(got)
	want := []string{
		"D 100644 gone.txt", "D 100644 wasfile",
		"I 100644 .git/info/exclude", "I 100644 .gitignore", "I 100644 d/.gitattributes",
		"M 100644 edited.txt", "M 100755 chmod.sh",
		"N 100644 sub/new.txt", "N 100644 wasfile/now-a-dir.txt", "N 120000 link",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("records:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// The limit: the guest gives up past it.
	if _, giveUp, err := p.client.ScanWorkspace(tctx(t), dir, 2); err != nil || !strings.Contains(giveUp, "more than 2") {
		t.Errorf("limited scan: %q %v", giveUp, err)
	}
	// A nested repository: the guest gives up.
	os.MkdirAll(filepath.Join(dir, "sub/.git"), 0o755)
	if _, giveUp, err := p.client.ScanWorkspace(tctx(t), dir, 100); err != nil || !strings.Contains(giveUp, "nested repository") {
		t.Errorf("nested: %q %v", giveUp, err)
	}
	os.RemoveAll(filepath.Join(dir, "sub/.git"))
	// No manifest: a remote error.
	var re *RemoteError
	if _, _, err := p.client.ScanWorkspace(tctx(t), t.TempDir(), 100); !errors.As(err, &re) {
		t.Errorf("no manifest: %v", err)
	}

	// Fetch: the files asked for, symlinks as links, nothing outside dir.
	outside := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(outside, []byte("secret"), 0o644)
	os.Symlink(outside, filepath.Join(dir, "escape"))
	var buf bytes.Buffer
	if err := p.client.FetchFiles(tctx(t), dir, []string{"edited.txt", "link", "missing", "escape/..", "../x", "sub"}, &buf, 1<<20); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&buf)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		names = append(names, fmt.Sprintf("%s %c %s%s", h.Name, h.Typeflag, body, h.Linkname))
	}
	if w := "edited.txt 0 edited in the guest\n|link 2 same.txt"; strings.Join(names, "|") != w {
		t.Errorf("fetched %q, want %q", strings.Join(names, "|"), w)
	}
	buf.Reset()
	if err := p.client.FetchFiles(tctx(t), dir, []string{"edited.txt"}, &buf, 100); !errors.Is(err, ErrLimitExceeded) {
		t.Errorf("limit: %v", err)
	}
}

// A hostile scan answer: malformed records, too many, long paths.
func TestParseScanHostile(t *testing.T) {
	many := strings.Repeat("D 100644 0 x\x00", 11)
	for name, in := range map[string]string{
		"truncated":   "N 100644 1 a",
		"no fields":   "N\x00",
		"bad kind":    "Z 100644 1 a\x00",
		"bad mode":    "N 9x 1 a\x00",
		"bad size":    "N 100644 -1 a\x00",
		"long path":   "N 100644 1 " + strings.Repeat("a", MaxScanPath+1) + "\x00",
		"too many":    many,
		"wide kind":   "NN 100644 1 a\x00",
		"size is hex": "N 100644 0x10 a\x00",
	} {
		if _, _, err := ParseScan([]byte(in), 10); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v, want ErrProtocol", name, err)
		}
	}
	if _, g, err := ParseScan([]byte("X 0 0 because\x00N 100644 1 a\x00"), 10); err != nil || g != "because" {
		t.Errorf("give up: %q %v", g, err)
	}
}

// WarmTree reaches every entry of a tree once (as filepath.WalkDir does),
// without following a symbolic link, also when more directories are
// waiting than its queue holds; and it returns (the workers end).
func TestWarmTree(t *testing.T) {
	dir := t.TempDir()
	for i := range 50 {
		wsFile(t, dir, fmt.Sprintf("d%d/e%d/f", i%7, i), "x", 0o644, time.Now())
	}
	for i := range 700 { // more than the queue's 512
		if err := os.MkdirAll(filepath.Join(dir, "wide", strconv.Itoa(i), "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	wsFile(t, dir, ".git/index", "idx", 0o644, time.Now())
	if err := os.Symlink("..", filepath.Join(dir, "d0", "loop")); err != nil {
		t.Fatal(err)
	}
	want := -1 // WalkDir counts the root
	filepath.WalkDir(dir, func(string, fs.DirEntry, error) error { want++; return nil })
	for _, workers := range []int{1, 4} {
		done := make(chan int)
		go func() { done <- WarmTree(dir, workers) }()
		select {
		case got := <-done:
			if got != want {
				t.Errorf("%d workers: reached %d entries, want %d", workers, got, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("WarmTree did not return")
		}
	}
	if n := WarmTree(filepath.Join(dir, "missing"), 2); n != 0 {
		t.Errorf("missing dir: %d entries", n)
	}
}

// BenchmarkWarmTree: WarmTree's walk against the one it replaced
// (os.ReadDir, which sorts, then DirEntry.Info, an lstat of the whole path,
// per entry), one worker each, on GOROOT/src with the host's caches hot:
// what each costs in CPU, which is what a guest's idle vCPU pays.
//
//	go test ./internal/agent -run - -bench WarmTree -count 5
func BenchmarkWarmTree(b *testing.B) {
	dir := filepath.Join(runtime.GOROOT(), "src")
	if _, err := os.Stat(dir); err != nil {
		b.Skip("no GOROOT/src")
	}
	b.Run("fstatat", func(b *testing.B) {
		for b.Loop() {
			WarmTree(dir, 1)
		}
	})
	b.Run("readdir+lstat", func(b *testing.B) {
		var walk func(string)
		walk = func(d string) {
			ents, _ := os.ReadDir(d)
			for _, e := range ents {
				if e.IsDir() {
					walk(filepath.Join(d, e.Name()))
					continue
				}
				e.Info()
			}
		}
		for b.Loop() {
			walk(dir)
		}
	})
}
