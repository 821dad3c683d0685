package workspace

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// hostileShapes are patches of the shapes that cost a line parser most:
// one hunk of empty lines, and many sections of a few short lines.
func hostileShapes(size int) map[string][]byte {
	lines := (size - 100) / 2
	var a bytes.Buffer
	fmt.Fprintf(&a, "diff --git a/big b/big\nnew file mode 100644\n--- /dev/null\n+++ b/big\n@@ -0,0 +1,%d @@\n", lines)
	a.WriteString(strings.Repeat("+\n", lines))
	var b bytes.Buffer
	for i := 0; b.Len() < size-100; i++ {
		fmt.Fprintf(&b, "diff --git a/f%07d b/f%07d\ndeleted file mode 100644\nindex e69de29..0000000\n", i, i)
	}
	return map[string][]byte{"one hunk of empty lines": a.Bytes(), "many empty-file deletions": b.Bytes()}
}

// measure returns what f allocates in all and the peak of the heap in use
// above what it was before (sampled every millisecond).
func measure(f func()) (total, peak uint64) {
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var mu sync.Mutex
	stop, done := make(chan struct{}), make(chan struct{})
	sample := func() {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		mu.Lock()
		if ms.HeapInuse > before.HeapInuse {
			peak = max(peak, ms.HeapInuse-before.HeapInuse)
		}
		total = ms.TotalAlloc - before.TotalAlloc
		mu.Unlock()
	}
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				sample()
			}
		}
	}()
	f()
	close(stop)
	<-done
	sample()
	return total, peak
}

func inMiB(n uint64) float64 { return float64(n) / (1 << 20) }

// TestParsePatchMemoryBounded: ParsePatch allocated ~19x its input (issue
// 16, item 4: 16 MiB in -> 306 MiB), which the 512 MiB limit made ~9.6
// GiB in the root daemon on vm delete. Parsed as a stream it allocates the
// text once plus ~150 bytes per file, and ScanPatch (what the daemon
// uses) keeps no text.
func TestParsePatchMemoryBounded(t *testing.T) {
	const size = 16 << 20
	for name, patch := range hostileShapes(size) {
		t.Run(name, func(t *testing.T) {
			var p *Patch
			var err error
			total, peak := measure(func() { p, err = ParsePatch(bytes.NewReader(patch), 0) })
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			in := float64(len(patch))
			t.Logf("ParsePatch: %d files, %.1f MiB in: %.1f MiB allocated (%.1fx), peak heap +%.1f MiB", len(p.Changes), in/(1<<20), inMiB(total), float64(total)/in, inMiB(peak))
			if float64(total) > 5*in { // was 19x
				t.Errorf("ParsePatch allocated %.1fx its input", float64(total)/in)
			}
			var cs []Change
			total, peak = measure(func() { cs, err = ScanPatch(bytes.NewReader(patch), 0) })
			if err != nil || len(cs) != len(p.Changes) {
				t.Fatalf("scan: %d changes, %v", len(cs), err)
			}
			t.Logf("ScanPatch: %.1f MiB allocated (%.1fx), peak heap +%.1f MiB", inMiB(total), float64(total)/in, inMiB(peak))
			if float64(total) > 3.5*in {
				t.Errorf("ScanPatch allocated %.1fx its input", float64(total)/in)
			}
		})
	}
}

// TestPatchLongLines: a long line in a hunk costs nothing to parse (only
// its first byte matters); an over-long header line is refused.
func TestPatchLongLines(t *testing.T) {
	long := strings.Repeat("x", 8<<20)
	patch := "diff --git a/big b/big\nnew file mode 100644\n--- /dev/null\n+++ b/big\n@@ -0,0 +1 @@\n+" + long + "\n"
	var cs []Change
	var err error
	total, _ := measure(func() { cs, err = ScanPatch(strings.NewReader(patch), 0) })
	if err != nil || len(cs) != 1 || cs[0].Path != "big" {
		t.Fatalf("scan: %v %+v", err, cs)
	}
	if total > 1<<20 {
		t.Errorf("ScanPatch allocated %.1f MiB for one 8 MiB line", inMiB(total))
	}
	p, err := ParsePatch(strings.NewReader(patch), 0)
	if err != nil || p.Size() != int64(len(patch)) {
		t.Fatalf("parse: %v (size %d)", err, p.Size())
	}
	hdr := "diff --git a/" + long + " b/" + long + "\ndeleted file mode 100644\n"
	if _, err := ScanPatch(strings.NewReader(hdr), 0); !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("8 MiB header line: %v", err)
	}
}
