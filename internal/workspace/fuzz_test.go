package workspace

import (
	"bytes"
	"errors"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// The patch a guest exports is hostile input: these fuzz targets feed
// ScanPatch, ParsePatch and CheckPath arbitrary bytes. Properties: no
// panic; every error is a RejectError (errors.Is ErrRejected); memory
// stays within a line of the patch plus a bound per changed file; every
// path of an accepted patch passes CheckPath; and CheckPath accepts only
// clean, local paths that do not reach into .git.
// Seeds: testdata/fuzz/FuzzXxx (go test runs them); longer runs: see the
// README, "Fuzzing".

// fuzzPatchLimit is the limit the fuzz targets pass: large enough for
// anything the fuzzer makes, small enough that the limit path is reached.
const fuzzPatchLimit = 1 << 20

// allocated returns the bytes f allocates.
func allocated(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// patchAllocCap is what parsing a patch of n bytes may allocate: the line
// buffer, a few bytes per input byte (names and modes are copied out of
// the lines), and the per-file records.
func patchAllocCap(n int) uint64 { return 256<<10 + 16*uint64(n) }

func checkChanges(t *testing.T, cs []Change) {
	t.Helper()
	for _, c := range cs {
		if err := CheckPath(c.Path); err != nil {
			t.Fatalf("accepted patch has a path CheckPath refuses: %q: %v", c.Path, err)
		}
		if c.OldPath != "" {
			if err := CheckPath(c.OldPath); err != nil {
				t.Fatalf("accepted patch has an old path CheckPath refuses: %q: %v", c.OldPath, err)
			}
		}
		switch c.Kind {
		case Modified, Added, Deleted, Renamed, Copied, ModeChanged:
		default:
			t.Fatalf("change of unknown kind %q", c.Kind)
		}
	}
}

func FuzzScanPatch(f *testing.F) {
	f.Add([]byte(newFilePatch("a.txt", "x")))
	f.Fuzz(func(t *testing.T, data []byte) {
		var cs []Change
		var err error
		n := allocated(func() { cs, err = ScanPatch(bytes.NewReader(data), fuzzPatchLimit) })
		if c := patchAllocCap(len(data)); n > c {
			t.Fatalf("ScanPatch of %d bytes allocated %d bytes, more than %d", len(data), n, c)
		}
		if err != nil {
			if !errors.Is(err, ErrRejected) {
				t.Fatalf("error is not a rejection: %v", err)
			}
			return
		}
		checkChanges(t, cs)
		// A limit below the patch's size refuses it.
		if len(data) > 1 && len(cs) > 0 {
			if _, err := ScanPatch(bytes.NewReader(data), int64(len(data)-1)); err == nil {
				t.Fatalf("a patch of %d bytes passed a limit of %d", len(data), len(data)-1)
			}
		}
	})
}

// FuzzParsePatch also runs git's cross-check (git apply --numstat): it is
// slower, and checks that what it accepts ScanPatch accepts the same way.
func FuzzParsePatch(f *testing.F) {
	f.Add([]byte(newFilePatch("a.txt", "x")))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePatch(bytes.NewReader(data), fuzzPatchLimit)
		if err != nil {
			if !errors.Is(err, ErrRejected) {
				t.Fatalf("error is not a rejection: %v", err)
			}
			return
		}
		checkChanges(t, p.Changes)
		if p.Size() != int64(len(data)) && !p.Empty() {
			t.Fatalf("patch text is %d bytes, read %d", p.Size(), len(data))
		}
		var buf bytes.Buffer
		if !p.Empty() {
			if err := WritePatch(p, &buf); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), data) {
				t.Fatalf("WritePatch does not give back the patch read")
			}
		}
		cs, err := ScanPatch(bytes.NewReader(data), fuzzPatchLimit)
		if err != nil {
			t.Fatalf("ParsePatch accepts what ScanPatch refuses: %v", err)
		}
		if len(cs) != len(p.Changes) || (len(cs) > 0 && !reflect.DeepEqual(cs, p.Changes)) {
			t.Fatalf("ScanPatch and ParsePatch disagree:\n%+v\n%+v", cs, p.Changes)
		}
	})
}

func FuzzCheckPath(f *testing.F) {
	f.Add("a/b.txt")
	f.Fuzz(func(t *testing.T, p string) {
		err := CheckPath(p)
		if err != nil {
			if !errors.Is(err, ErrRejected) {
				t.Fatalf("error is not a rejection: %v", err)
			}
			return
		}
		if !filepath.IsLocal(p) {
			t.Fatalf("CheckPath accepts %q, which is not local", p)
		}
		if filepath.Clean(p) != p {
			t.Fatalf("CheckPath accepts %q, which is not clean (%q)", p, filepath.Clean(p))
		}
		if strings.ContainsRune(p, 0) {
			t.Fatalf("CheckPath accepts a NUL: %q", p)
		}
		root := "/work/tree"
		if j := filepath.Join(root, p); !strings.HasPrefix(j, root+"/") {
			t.Fatalf("%q joined to %s leaves it: %s", p, root, j)
		}
		for _, el := range strings.Split(p, "/") {
			if t2 := strings.ToLower(strings.TrimRight(el, ". ")); t2 == ".git" || t2 == "git~1" {
				t.Fatalf("CheckPath accepts a path into .git: %q", p)
			}
		}
	})
}
