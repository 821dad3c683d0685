package daemon

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/consolelog"
	"github.com/banger-sh/banger/internal/store"
)

// TestConsoleLogBounded: a guest writing its serial console without end
// grew console.log without bound (issue 16, item 6). The daemon now cuts
// every console log past consolelog.Max, also one that grew while it was
// not running, while the VMM (here: the test, appending as QEMU does)
// keeps writing.
func TestConsoleLogBounded(t *testing.T) {
	l := testLayout(t)
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	path := l.VMConsoleLog("0badc0de")
	os.MkdirAll(filepath.Dir(path), 0o755)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	line := []byte(strings.Repeat("guest says hello ", 6) + "\n")
	chunk := bytes.Repeat(line, (64<<10)/len(line))
	var written int64
	write := func(n int) {
		for w := 0; w < n; w += len(chunk) {
			if _, err := f.Write(chunk); err != nil {
				t.Fatal(err)
			}
			written += int64(len(chunk))
		}
	}
	// A VM row owns the directory (reconcile removes those no row owns);
	// the log grew while no daemon ran; then the VMM keeps writing.
	st, err := store.Open(context.Background(), l.StoreFile())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.InsertVM(context.Background(), &store.VM{ID: "0badc0de", Name: "chatty", State: "stopped"}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	write(3 * consolelog.Max)
	_, logs := startDaemon(t, l)
	// While it writes (as fast as it can), once the first cut is made, the log
	// stays under Max plus what is written between two cuts (1 s).
	start, before := time.Now(), written
	deadline := start.Add(3 * time.Second)
	var largest int64
	cut := false
	for time.Now().Before(deadline) {
		write(64 << 10)
		if st, err := os.Stat(path); err == nil {
			cut = cut || st.Size() <= consolelog.Max
			if cut {
				largest = max(largest, st.Size())
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	rate := float64(written-before) / time.Since(start).Seconds()
	if !cut {
		t.Fatal("the log that grew while no daemon ran was not cut")
	}
	if bound := consolelog.Max + int64(1.5*rate); largest > bound {
		t.Errorf("the log reached %d bytes while written to, over %d", largest, bound)
	}
	f.Write([]byte("the last words\n"))
	waitFor := time.Now().Add(5 * time.Second)
	var size int64
	for time.Now().Before(waitFor) {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if size = st.Size(); size <= consolelog.Max {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("console log: written at %.1f MiB/s, largest after the first cut %.1f MiB, now %.1f MiB", rate/(1<<20), float64(largest)/(1<<20), float64(size)/(1<<20))
	if size > consolelog.Max {
		t.Fatalf("console log is %d bytes, more than %d", size, consolelog.Max)
	}
	data, _ := os.ReadFile(path)
	if !bytes.HasSuffix(data, []byte("the last words\n")) {
		t.Errorf("the newest output was not kept")
	}
	if !strings.Contains(logs.String(), "console log trimmed") {
		t.Errorf("the daemon did not log the trim")
	}
}

// TestStaleExportSpoolsRemovedAtStart: export spools a crashed daemon left
// (in the spool dir, or in the runtime dir where they used to be) are
// removed at start; other files stay.
func TestStaleExportSpoolsRemovedAtStart(t *testing.T) {
	l := testLayout(t)
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(l.SpoolDir(), 0o700)
	stale := []string{filepath.Join(l.SpoolDir(), "export-123.patch"), filepath.Join(l.Runtime, "export-456.patch")}
	keep := filepath.Join(l.SpoolDir(), "notes.txt")
	for _, p := range append(stale, keep) {
		if err := os.WriteFile(p, []byte("diff --git a/x b/x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	startDaemon(t, l)
	for _, p := range stale {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("stale spool %s still there (%v)", p, err)
		}
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("an unrelated file was removed: %v", err)
	}
	if strings.HasPrefix(l.SpoolDir(), l.Runtime) {
		t.Errorf("the spool dir %s is in the runtime dir %s", l.SpoolDir(), l.Runtime)
	}
}
