package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-sh/banger/internal/agent"
)

// localGuest is the agent's side of a host export run on a local directory
// (the simulated guest), through the same encode/parse code as the agent.
type localGuest struct {
	dir     string
	fetches int
}

func (g *localGuest) Scan(ctx context.Context, limit int) ([]agent.ScanRecord, string, error) {
	var b bytes.Buffer
	if err := agent.ScanDir(g.dir, limit, &b); err != nil {
		return nil, "", &agent.RemoteError{Op: "ws-scan", Message: err.Error()}
	}
	return agent.ParseScan(b.Bytes(), limit)
}

func (g *localGuest) Fetch(ctx context.Context, paths []string, w io.Writer, limit int64) error {
	g.fetches++
	var b bytes.Buffer
	if err := agent.WriteFiles(g.dir, paths, &b); err != nil {
		return err
	}
	if int64(b.Len()) > limit {
		return agent.ErrLimitExceeded
	}
	_, err := w.Write(b.Bytes())
	return err
}

// shippedShadow ships the fixture like shipped, and also makes the
// daemon's shadow repository from the pack.
func shippedShadow(t *testing.T) (string, *DiskInfo, string, HostExportOptions) {
	t.Helper()
	r := fixture(t)
	set, err := List(tctx(t), r, ListOptions{IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	td := t.TempDir()
	pack := filepath.Join(td, "ship.pack")
	info, err := BuildDisk(tctx(t), r, set, DiskOptions{Dest: filepath.Join(td, "work.ext4"), KeepStaging: true, Pack: pack})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(info.Staging)) })
	guest := filepath.Join(t.TempDir(), "guest")
	copyTree(t, info.Staging, guest)
	o := HostExportOptions{GitDir: filepath.Join(td, "shadow.git"), Base: info.Base.Commit, ObjectFormat: info.ObjectFormat, TmpDir: td}
	pf, err := os.Open(pack)
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	if err := ShadowInit(tctx(t), o.GitDir, pf, info.ObjectFormat, info.Base.Commit); err != nil {
		t.Fatal(err)
	}
	return r, info, guest, o
}

func hostExport(t *testing.T, g ExportGuest, o HostExportOptions) ([]byte, error) {
	t.Helper()
	var out bytes.Buffer
	err := HostExport(tctx(t), g, o, &out)
	return out.Bytes(), err
}

// The host export gives the guest script's bytes for every kind of change
// the round-trip test makes.
func TestHostExportSameBytes(t *testing.T) {
	_, _, g, o := shippedShadow(t)
	lg := &localGuest{dir: g}
	if out, err := hostExport(t, lg, o); err != nil || len(out) != 0 || lg.fetches != 0 {
		t.Fatalf("unchanged: %q %v (%d fetches)", out, err, lg.fetches)
	}
	editEverything(t, g)
	_, want := runExport(t, g, 0)
	got, err := hostExport(t, lg, o)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("host export differs from the guest's:\n--- host\n%s\n--- guest\n%s", got, want)
	}
	if !bytes.Contains(got, []byte("rename from ")) {
		t.Errorf("no rename in the patch: the fixture should have one")
	}
}

// Ignore rules: the guest's own (.gitignore edited in the guest, its
// info/exclude), new files in ignored directories, negations.
func TestHostExportIgnoreRules(t *testing.T) {
	_, _, g, o := shippedShadow(t)
	laterSecond()
	write(t, g, ".gitignore", "*.log\nbuild/\n*.o\n!keep.o\n", 0o644)
	write(t, g, "build/out.bin", "ignored dir\n", 0o644)
	write(t, g, "x.o", "ignored\n", 0o644)
	write(t, g, "keep.o", "negated: exported\n", 0o644)
	write(t, g, "deep/er/.gitignore", "local-*\n", 0o644)
	write(t, g, "deep/er/local-1", "ignored by a new nested .gitignore\n", 0o644)
	write(t, g, "deep/er/kept", "kept\n", 0o644)
	f, err := os.OpenFile(filepath.Join(g, ".git/info/exclude"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("guest-excluded\n")
	f.Close()
	write(t, g, "guest-excluded", "excluded by the guest's info/exclude\n", 0o644)
	_, want := runExport(t, g, 0)
	got, err := hostExport(t, &localGuest{dir: g}, o)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("host export differs:\n--- host\n%s\n--- guest\n%s", got, want)
	}
	for _, s := range []string{"keep.o", "deep/er/kept"} {
		if !bytes.Contains(got, []byte("b/"+s)) {
			t.Errorf("%s not exported", s)
		}
	}
	for _, s := range []string{"build/out.bin", "x.o", "local-1", "guest-excluded"} {
		if bytes.Contains(got, []byte(s)) {
			t.Errorf("%s exported", s)
		}
	}
}

// Conversion attributes and nested repositories fall back to the guest.
func TestHostExportFallbacks(t *testing.T) {
	_, _, g, o := shippedShadow(t)
	laterSecond()
	write(t, g, ".gitattributes", "*.txt text eol=crlf\n", 0o644)
	write(t, g, "a.txt", "changed\n", 0o644)
	if _, err := hostExport(t, &localGuest{dir: g}, o); !errors.Is(err, ErrFallback) {
		t.Errorf("conversion attribute: %v, want ErrFallback", err)
	}
	os.Remove(filepath.Join(g, ".gitattributes"))
	os.MkdirAll(filepath.Join(g, "nested/.git"), 0o755)
	if _, err := hostExport(t, &localGuest{dir: g}, o); !errors.Is(err, ErrFallback) {
		t.Errorf("nested repository: %v, want ErrFallback", err)
	}
	os.RemoveAll(filepath.Join(g, "nested"))
	os.Remove(filepath.Join(g, ".git", agent.ManifestFile))
	if _, err := hostExport(t, &localGuest{dir: g}, o); !errors.Is(err, ErrFallback) {
		t.Errorf("no manifest: %v, want ErrFallback", err)
	}
}

// fakeGuest answers with whatever a test wants.
type fakeGuest struct {
	recs   []agent.ScanRecord
	giveUp string
	tar    func(paths []string) []byte
	asked  [][]string
}

func (f *fakeGuest) Scan(context.Context, int) ([]agent.ScanRecord, string, error) {
	return f.recs, f.giveUp, nil
}

func (f *fakeGuest) Fetch(ctx context.Context, paths []string, w io.Writer, limit int64) error {
	f.asked = append(f.asked, paths)
	if f.tar == nil {
		return nil
	}
	b := f.tar(paths)
	if int64(len(b)) > limit {
		w.Write(b[:limit])
		return agent.ErrLimitExceeded
	}
	_, err := w.Write(b)
	return err
}

type tarEnt struct {
	name, body, link string
	typ              byte
	mode             int64
}

func mkTar(ents ...tarEnt) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Size: int64(len(e.body))}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		tw.WriteHeader(h)
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return b.Bytes()
}

func rec(kind byte, p string) agent.ScanRecord {
	return agent.ScanRecord{Kind: kind, Mode: 0o100644, Path: p}
}

// A hostile guest: bad paths, repeated paths, unasked or odd tar entries,
// symlink tricks, too much data. Each is refused (or, where it is only a
// question of size, falls back), and nothing is written outside the
// export's own scratch directory.
func TestHostExportHostileGuest(t *testing.T) {
	_, _, _, o := shippedShadow(t)
	outside := t.TempDir()
	for _, tc := range []struct {
		name     string
		g        *fakeGuest
		fallback bool
		want     string
	}{
		{name: "dotdot", g: &fakeGuest{recs: []agent.ScanRecord{rec('N', "../x")}}, want: `".." component`},
		{name: "absolute", g: &fakeGuest{recs: []agent.ScanRecord{rec('N', outside+"/x")}}, want: "absolute"},
		{name: "into .git", g: &fakeGuest{recs: []agent.ScanRecord{rec('M', ".git/config")}}, want: "into .git"},
		{name: "into .GIT", g: &fakeGuest{recs: []agent.ScanRecord{rec('N', "a/.GIT/hooks/x")}}, want: "into .git"},
		{name: "empty component", g: &fakeGuest{recs: []agent.ScanRecord{rec('N', "a//b")}}, want: "empty path component"},
		{name: "long", g: &fakeGuest{recs: []agent.ScanRecord{rec('N', strings.Repeat("a", agent.MaxScanPath+1))}}, want: "too long"},
		{name: "twice", g: &fakeGuest{recs: []agent.ScanRecord{rec('N', "x"), rec('D', "x")}}, want: "twice"},
		{name: "bad mode", g: &fakeGuest{recs: []agent.ScanRecord{{Kind: 'N', Mode: 0o160000, Path: "x"}}}, want: "mode"},
		{name: "rules elsewhere", g: &fakeGuest{recs: []agent.ScanRecord{rec('I', ".git/config")}}, want: "not a rules file"},
		{name: "rules dotdot", g: &fakeGuest{recs: []agent.ScanRecord{rec('I', "../.gitignore")}}, want: `".." component`},
		{name: "give up", g: &fakeGuest{giveUp: "more than 20000 changes"}, fallback: true},
		{name: "too many", g: &fakeGuest{recs: func() []agent.ScanRecord {
			var rs []agent.ScanRecord
			for i := 0; i <= HostExportMaxChanges; i++ {
				rs = append(rs, rec('D', fmt.Sprintf("f%d", i)))
			}
			return rs
		}()}, want: "more than"},
		{name: "unasked entry", g: &fakeGuest{recs: []agent.ScanRecord{rec('M', "a.txt")},
			tar: func([]string) []byte { return mkTar(tarEnt{name: "b.txt", body: "x"}) }}, want: "not asked for"},
		{name: "entry twice", g: &fakeGuest{recs: []agent.ScanRecord{rec('M', "a.txt")},
			tar: func([]string) []byte {
				return mkTar(tarEnt{name: "a.txt", body: "x"}, tarEnt{name: "a.txt", body: "y"})
			}}, want: "not asked for"},
		{name: "hard link", g: &fakeGuest{recs: []agent.ScanRecord{rec('M', "a.txt")},
			tar: func([]string) []byte { return mkTar(tarEnt{name: "a.txt", typ: tar.TypeLink, link: "/etc/shadow"}) }}, want: "of type"},
		{name: "directory", g: &fakeGuest{recs: []agent.ScanRecord{rec('M', "a.txt")},
			tar: func([]string) []byte { return mkTar(tarEnt{name: "a.txt", typ: tar.TypeDir}) }}, want: "of type"},
		{name: "too big", g: &fakeGuest{recs: []agent.ScanRecord{rec('M', "a.txt")},
			tar: func([]string) []byte { return bytes.Repeat([]byte{0}, hostExportMaxFiles+100<<10) }}, fallback: true},
		// A symlink and a file below it, a file below a shipped file: git
		// makes one coherent tree of it (the later entry replaces the
		// earlier), the patch passes ParsePatch, and nothing is ever
		// written through the link.
		{name: "file below a new symlink", g: &fakeGuest{recs: []agent.ScanRecord{{Kind: 'N', Mode: 0o120000, Path: "lnk"}, rec('N', "lnk/x")},
			tar: func([]string) []byte {
				return mkTar(tarEnt{name: "lnk", typ: tar.TypeSymlink, link: outside}, tarEnt{name: "lnk/x", body: "pwned"})
			}}},
		{name: "file below a base file", g: &fakeGuest{recs: []agent.ScanRecord{rec('N', "a.txt/x")},
			tar: func([]string) []byte { return mkTar(tarEnt{name: "a.txt/x", body: "pwned"}) }}},
		// A rules file below a symlink the guest has: written into a real
		// directory of the scratch tree, never through a link.
		{name: "rules below a symlink", g: &fakeGuest{recs: []agent.ScanRecord{{Kind: 'N', Mode: 0o120000, Path: "lnk"}, rec('I', "lnk/.gitignore")},
			tar: func(ps []string) []byte {
				if len(ps) == 1 && ps[0] == "lnk/.gitignore" {
					return mkTar(tarEnt{name: "lnk/.gitignore", body: "*\n"})
				}
				return mkTar(tarEnt{name: "lnk", typ: tar.TypeSymlink, link: outside})
			}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := hostExport(t, tc.g, o)
			if err == nil {
				if _, perr := ParsePatch(bytes.NewReader(out), 0); perr != nil {
					t.Errorf("the patch does not parse: %v\n%s", perr, out)
				}
			}
			switch {
			case tc.fallback && !errors.Is(err, ErrFallback):
				t.Errorf("err %v, want ErrFallback", err)
			case !tc.fallback && tc.want == "" && err != nil:
				t.Errorf("err %v", err)
			case tc.want != "" && (err == nil || errors.Is(err, ErrFallback) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("err %v, want an error with %q", err, tc.want)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Fatalf("something was written outside: %v", ents)
			}
			if tmp, _ := filepath.Glob(filepath.Join(o.TmpDir, "hostexport-*")); len(tmp) != 0 {
				t.Errorf("scratch left behind: %v", tmp)
			}
		})
	}
}
