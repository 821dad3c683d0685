package initrd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/banger-sh/banger/internal/system"
)

type entry struct {
	name       string
	mode       uint32
	nlink      uint32
	rmaj, rmin uint32
	data       []byte
}

// readArchive is an independent newc parser used to check the writer.
func readArchive(t *testing.T, b []byte) []entry {
	t.Helper()
	var out []entry
	off := 0
	field := func(i int) uint32 {
		s := string(b[off+6+8*i : off+6+8*i+8])
		v, err := strconv.ParseUint(s, 16, 32)
		if err != nil {
			t.Fatalf("bad header field %d %q at %d", i, s, off)
		}
		return uint32(v)
	}
	for {
		if off%4 != 0 {
			t.Fatalf("header at unaligned offset %d", off)
		}
		if off+headerSize > len(b) || string(b[off:off+6]) != newcMagic {
			t.Fatalf("bad magic at %d", off)
		}
		e := entry{mode: field(1), nlink: field(4), rmaj: field(9), rmin: field(10)}
		size := int(field(6))
		nameSize := int(field(11))
		nameStart := off + headerSize
		if b[nameStart+nameSize-1] != 0 {
			t.Fatalf("name not NUL-terminated at %d", off)
		}
		e.name = string(b[nameStart : nameStart+nameSize-1])
		dataStart := nameStart + nameSize
		dataStart += pad4(dataStart)
		e.data = b[dataStart : dataStart+size]
		off = dataStart + size
		off += pad4(off)
		if e.name == trailer {
			if off != len(b) {
				t.Fatalf("%d bytes after trailer", len(b)-off)
			}
			return out
		}
		out = append(out, e)
	}
}

func TestWriterRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.Dir("/a", 0o755))
	must(w.File("a/odd", 0o640, []byte("12345")))
	must(w.File("a/empty", 0o600, nil))
	must(w.Symlink("a/link", "odd"))
	must(w.CharDev("a/console", 0o600, 5, 1))
	must(w.Close())
	got := readArchive(t, buf.Bytes())
	want := []struct {
		name string
		mode uint32
		data string
	}{
		{"a", 0o040755, ""},
		{"a/odd", 0o100640, "12345"},
		{"a/empty", 0o100600, ""},
		{"a/link", 0o120777, "odd"},
		{"a/console", 0o020600, ""},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.name != w.name || g.mode != w.mode || string(g.data) != w.data {
			t.Errorf("entry %d = %q %o %q, want %q %o %q", i, g.name, g.mode, g.data, w.name, w.mode, w.data)
		}
	}
	if got[4].rmaj != 5 || got[4].rmin != 1 {
		t.Errorf("console rdev = %d:%d", got[4].rmaj, got[4].rmin)
	}
	if err := w.File("late", 0o644, nil); err == nil {
		t.Error("write after Close succeeded")
	}
}

func TestWriterRejectsBadNames(t *testing.T) {
	w := NewWriter(io.Discard)
	for _, n := range []string{"", "/", "."} {
		if err := w.Dir(n, 0o755); err == nil {
			t.Errorf("Dir(%q) succeeded", n)
		}
	}
}

func makeModulesDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestCompose(t *testing.T) {
	mods := makeModulesDir(t, map[string]string{
		"virtio.ko":      "V",
		"virtio_mmio.ko": "M",
		"load-order":     "# comment\nvirtio.ko\n\nvirtio_mmio.ko\n",
	})
	out := filepath.Join(t.TempDir(), "initrd.img")
	agent := bytes.Repeat([]byte{0x7f, 'E', 'L', 'F'}, 1001)
	if err := Compose(out, mods, agent); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]entry{}
	for _, e := range readArchive(t, b) {
		byName[e.name] = e
	}
	if e := byName["init"]; e.mode != 0o100755 || !bytes.Equal(e.data, agent) {
		t.Errorf("init: mode %o, %d bytes", e.mode, len(e.data))
	}
	if e := byName["dev/console"]; e.mode != 0o020600 || e.rmaj != 5 || e.rmin != 1 {
		t.Errorf("dev/console: %+v", e)
	}
	for _, d := range []string{"dev", "proc", "sys", "newroot", "lib/modules/banger"} {
		if e, ok := byName[d]; !ok || e.mode&0o170000 != modeDir {
			t.Errorf("missing dir %s", d)
		}
	}
	if e := byName["lib/modules/banger/virtio_mmio.ko"]; string(e.data) != "M" {
		t.Errorf("module content %q", e.data)
	}
	if got := ParseLoadOrder(byName["lib/modules/banger/load-order"].data); strings.Join(got, ",") != "virtio.ko,virtio_mmio.ko" {
		t.Errorf("load order %v", got)
	}

	// Deterministic: the same inputs give the same bytes.
	out2 := filepath.Join(t.TempDir(), "initrd2.img")
	if err := Compose(out2, mods, agent); err != nil {
		t.Fatal(err)
	}
	b2, _ := os.ReadFile(out2)
	if !bytes.Equal(b, b2) {
		t.Error("Compose is not deterministic")
	}
	// No temporary files left beside the output.
	ents, _ := os.ReadDir(filepath.Dir(out))
	if len(ents) != 1 {
		t.Errorf("output dir holds %d entries, want 1", len(ents))
	}

	// Cross-check with GNU cpio when it is installed.
	if _, err := system.LookPath("cpio"); err == nil {
		list, err := system.RunOpts(context.Background(), system.Opts{Stdin: bytes.NewReader(b)}, "cpio", "-t", "--quiet")
		if err != nil {
			t.Fatalf("cpio -t: %v", err)
		}
		var names []string
		for n := range byName {
			names = append(names, n)
		}
		sort.Strings(names)
		got := strings.Fields(string(list))
		sort.Strings(got)
		if fmt.Sprint(got) != fmt.Sprint(names) {
			t.Errorf("cpio -t lists %v, want %v", got, names)
		}
	} else {
		t.Log("cpio not installed: skipped the cross-check with GNU cpio")
	}
}

func TestComposeWithoutModules(t *testing.T) {
	out := filepath.Join(t.TempDir(), "initrd.img")
	if err := Compose(out, "", []byte("agent")); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	for _, e := range readArchive(t, b) {
		if strings.HasSuffix(e.name, ".ko") {
			t.Errorf("unexpected module %s", e.name)
		}
	}
}

func TestComposeValidatesModules(t *testing.T) {
	out := filepath.Join(t.TempDir(), "initrd.img")
	noOrder := makeModulesDir(t, map[string]string{"a.ko": "x"})
	if err := Compose(out, noOrder, []byte("agent")); err == nil {
		t.Error("Compose without load-order succeeded")
	}
	missing := makeModulesDir(t, map[string]string{"a.ko": "x", "load-order": "a.ko\nb.ko\n"})
	if err := Compose(out, missing, []byte("agent")); err == nil || !strings.Contains(err.Error(), "b.ko") {
		t.Errorf("Compose with a missing module: %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Error("failed Compose left an output file")
	}
}
