package consolelog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// appender writes numbered lines to path through its own O_APPEND file
// (as QEMU's file chardev does) until stop is closed, and returns how many.
func appender(t *testing.T, path string, stop <-chan struct{}) func() int {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer f.Close()
		for {
			select {
			case <-stop:
				return
			default:
			}
			var b bytes.Buffer
			for i := 0; i < 64; i++ {
				fmt.Fprintf(&b, "line %09d %s\n", n, "guest output guest output guest output")
				n++
			}
			if _, err := f.Write(b.Bytes()); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	return func() int { wg.Wait(); return n }
}

// checkSuffix verifies that data is a contiguous run of the lines the
// appender wrote, ending with the last one (the first line may be cut).
func checkSuffix(t *testing.T, data []byte, total int) {
	t.Helper()
	lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	if len(lines) < 2 {
		t.Fatalf("%d lines left", len(lines))
	}
	prev := -1
	for i, l := range lines[1:] { // lines[0] may start mid-line
		f := bytes.Fields(l)
		if len(f) < 2 || string(f[0]) != "line" {
			t.Fatalf("line %d: %q", i+1, l)
		}
		n, err := strconv.Atoi(string(f[1]))
		if err != nil {
			t.Fatalf("line %d: %q", i+1, l)
		}
		if prev >= 0 && n != prev+1 {
			t.Fatalf("line %d: %d after %d: output lost or misplaced", i+1, n, prev)
		}
		prev = n
	}
	if prev != total-1 {
		t.Fatalf("last line %d, want %d", prev, total-1)
	}
	if bytes.IndexByte(data, 0) >= 0 {
		t.Fatalf("NUL bytes in the log: the writer left a hole")
	}
}

func collapseSupported(dir string) bool {
	f, err := os.CreateTemp(dir, "probe")
	if err != nil {
		return false
	}
	defer os.Remove(f.Name())
	defer f.Close()
	f.Write(make([]byte, 1<<20))
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_COLLAPSE_RANGE, 0, 64<<10) == nil
}

// TestTrimWhileAppending: a log a process keeps appending to stays bounded
// and keeps its newest output, contiguous, with nothing lost or misplaced
// (COLLAPSE_RANGE is atomic against O_APPEND writes).
func TestTrimWhileAppending(t *testing.T) {
	dir := t.TempDir()
	if !collapseSupported(dir) {
		t.Skipf("%s cannot collapse ranges (TestTrimFallback covers such filesystems)", dir)
	}
	path := filepath.Join(dir, "console.log")
	const max, keep = 1 << 20, 512 << 10
	stop := make(chan struct{})
	wait := appender(t, path, stop)
	var dropped int64
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		n, err := Trim(path, max, keep)
		if err != nil {
			t.Fatal(err)
		}
		dropped += n
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	total := wait()
	if _, err := Trim(path, max, keep); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d lines (%d MiB) written, %d MiB dropped, %d KiB left", total, (dropped+int64(len(data)))>>20, dropped>>20, len(data)>>10)
	if dropped == 0 {
		t.Fatal("nothing was trimmed")
	}
	if int64(len(data)) > max {
		t.Errorf("%d bytes left, more than %d", len(data), max)
	}
	if int64(len(data)) < keep {
		t.Errorf("%d bytes left, fewer than the %d to keep", len(data), keep)
	}
	checkSuffix(t, data, total)
}

// TestTrimFallback: without COLLAPSE_RANGE the tail is rewritten.
func TestTrimFallback(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	stop := make(chan struct{})
	wait := appender(t, path, stop)
	time.Sleep(100 * time.Millisecond)
	close(stop)
	total := wait()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := f.Stat()
	n, err := rewriteTail(f, path, 64<<10)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if int64(len(data)) != 64<<10 || n != before.Size()-64<<10 {
		t.Fatalf("kept %d bytes, dropped %d of %d", len(data), n, before.Size())
	}
	checkSuffix(t, data, total)
}

func TestTrimLeavesShortAndMissingFiles(t *testing.T) {
	dir := t.TempDir()
	if n, err := Trim(filepath.Join(dir, "none"), 10, 5); n != 0 || err != nil {
		t.Errorf("missing file: %d %v", n, err)
	}
	p := filepath.Join(dir, "short")
	os.WriteFile(p, []byte("hello\n"), 0o600)
	if n, err := Trim(p, 10, 5); n != 0 || err != nil {
		t.Errorf("short file: %d %v", n, err)
	}
	if b, _ := os.ReadFile(p); string(b) != "hello\n" {
		t.Errorf("short file changed: %q", b)
	}
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	if _, err := Trim(filepath.Join(dir, "d"), 10, 5); err == nil || errors.Is(err, os.ErrNotExist) {
		t.Errorf("a directory: %v", err)
	}
}
