package workspace

import (
	"archive/tar"
	"bytes"
	"compress/zlib"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/errdefs"
	"golang.org/x/sys/unix"
)

// Host export: the workspace's patch built by host git from the files the
// guest's agent reports changed (agent.ScanWorkspace, agent.FetchFiles),
// against a copy of the base's objects the daemon holds (the shipped
// .git's pack, ShadowInit). It gives the bytes of the guest's
// ExportCommand (same diff options, same rename fallback) at native speed:
// an unchanged workspace costs one walk in the guest and no git at all.
//
// Where this cannot promise the same bytes it returns an error matching
// ErrFallback, and the caller runs ExportCommand in the guest instead:
// conversion attributes (text, eol, crlf, ident, filter,
// working-tree-encoding) on a changed path, a nested repository, more
// changes than the limits, a D/F clash git refuses.
//
// Trust: the scan and the files are the guest's. Every path is checked
// (CheckPath: relative, no "." or "..", no .git component, no control
// character, at most agent.MaxScanPath bytes), a path is reported once,
// tar entries must be the regular files and symlinks asked for, their
// bytes are bounded, and nothing of the guest's is written on the host but
// loose objects (named by their hash) and .gitignore/.gitattributes files
// in a fresh private directory (no symlink is ever created there). The
// patch then goes through the same ParsePatch/ScanPatch checks as before.

// ErrFallback is matched by HostExport errors that mean "export with git in
// the guest instead".
var ErrFallback = errors.New("host export not possible")

// Limits of a host export.
const (
	// HostExportMaxChanges bounds the changed paths of a scan.
	HostExportMaxChanges = 20000
	// hostExportMaxRules bounds the bytes of .gitignore/.gitattributes files.
	hostExportMaxRules = 8 << 20
	// hostExportMaxFiles bounds the tar of the changed files.
	hostExportMaxFiles = DefaultPatchLimit
)

// ExportGuest is the guest side of a host export (an agent client bound to
// the workspace directory).
type ExportGuest interface {
	Scan(ctx context.Context, limit int) ([]agent.ScanRecord, string, error)
	Fetch(ctx context.Context, paths []string, w io.Writer, limit int64) error
}

// HostExportOptions describe a host export.
type HostExportOptions struct {
	GitDir       string // the shadow repository (ShadowInit)
	Base         string // the base commit
	ObjectFormat string // sha1 or sha256
	TmpDir       string // scratch space (a private directory is made in it)
	// Ready, when set, is called once the guest has reported changes,
	// before GitDir is used (a command that changed nothing never needs
	// it): it waits for the shadow repository being made. Its error makes
	// the export ErrFallback (git in the guest).
	Ready func(context.Context) error
}

// ShadowInit makes the bare repository gitDir (which must not exist) and
// indexes pack (the shipped .git's pack, read from its start) into it, then
// checks that base is a commit in it.
func ShadowInit(ctx context.Context, gitDir string, pack *os.File, format, base string) error {
	if format == "" {
		format = "sha1"
	}
	if format != "sha1" && format != "sha256" {
		return errdefs.InvalidArgument(fmt.Sprintf("object format %q", format))
	}
	// In the background of a VM's start and run: at nice 19, so that its
	// hashing (~1.5 s for the Go tree) does not take the CPU from the
	// emulated guest.
	gi := hostGit("", "", nil)
	gi.nice = 19
	if _, err := gi.run(ctx, "init", "-q", "--bare", "--object-format="+format, gitDir); err != nil {
		return fmt.Errorf("workspace objects: %w", err)
	}
	if _, err := pack.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("workspace objects: %w", err)
	}
	g := hostGit(gitDir, "", nil)
	g.stdin, g.nice = pack, 19
	if _, err := g.run(ctx, "index-pack", "--stdin"); err != nil {
		return fmt.Errorf("workspace objects: %w", err)
	}
	gc := hostGit(gitDir, "", nil)
	gc.nice = 19
	if _, err := gc.run(ctx, "cat-file", "-e", base+"^{commit}"); err != nil {
		return errdefs.InvalidArgument(fmt.Sprintf("workspace objects: base %.12s is not in the pack", base))
	}
	return nil
}

// hostGit is git on the daemon's own repository: no system or global
// config (the daemon runs as root), no prompts.
func hostGit(gitDir, workTree string, env []string) gitCmd {
	e := []string{"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "HOME=/nonexistent", "XDG_CONFIG_HOME=/nonexistent"}
	if gitDir != "" {
		e = append(e, "GIT_DIR="+gitDir)
	}
	if workTree != "" {
		e = append(e, "GIT_WORK_TREE="+workTree)
	}
	return gitCmd{dir: workTree, env: append(e, env...)}
}

// exportPins are the export script's g() options.
var exportPins = []string{"-c", "core.checkStat=minimal", "-c", "core.trustctime=false",
	"-c", "core.splitIndex=false", "-c", "core.untrackedCache=false",
	"-c", "core.autocrlf=false", "-c", "diff.noprefix=false",
	"-c", "diff.mnemonicPrefix=false", "-c", "diff.relative=false", "-c", "diff.external=",
	"-c", "core.symlinks=true", "-c", "core.filemode=true", "-c", "core.ignorecase=false"}

// conversionAttrs change a file's bytes between work tree and blob.
var conversionAttrs = []string{"text", "eol", "crlf", "ident", "filter", "working-tree-encoding"}

// HostExport writes the workspace's patch (the bytes ExportCommand would
// print) to out; nothing when nothing changed.
func HostExport(ctx context.Context, g ExportGuest, o HostExportOptions, out io.Writer) (err error) {
	recs, giveUp, err := g.Scan(ctx, HostExportMaxChanges)
	if err != nil {
		var re *agent.RemoteError
		if errors.As(err, &re) {
			return fmt.Errorf("%w: %v", ErrFallback, err) // an agent or workspace without a manifest
		}
		return err
	}
	if giveUp != "" {
		return fmt.Errorf("%w: the guest: %s", ErrFallback, giveUp)
	}
	sc, err := checkScan(recs)
	if err != nil {
		return err
	}
	if len(sc.changed) == 0 && len(sc.deleted) == 0 {
		return nil // one walk: nothing changed
	}
	if o.Ready != nil {
		if err := o.Ready(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%w: the base's objects: %v", ErrFallback, err)
		}
	}
	td, err := os.MkdirTemp(o.TmpDir, "hostexport-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(td)
	wt, objs := filepath.Join(td, "wt"), filepath.Join(td, "objects")
	for _, d := range []string{wt, objs} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
	}
	env := []string{"GIT_INDEX_FILE=" + filepath.Join(td, "index"),
		"GIT_OBJECT_DIRECTORY=" + objs,
		"GIT_ALTERNATE_OBJECT_DIRECTORIES=" + filepath.Join(o.GitDir, "objects"),
		"GIT_OPTIONAL_LOCKS=0"}
	hg := func(stdin io.Reader, w io.Writer) gitCmd {
		c := hostGit(o.GitDir, wt, env)
		c.stdin, c.out = stdin, w
		return c
	}
	pins := append([]string(nil), exportPins...)

	// The rules the guest's git would use.
	if len(sc.rules) > 0 {
		if err := fetchRules(ctx, g, sc.rules, wt, td); err != nil {
			return err
		}
		for name, opt := range map[string]string{"exclude": "core.excludesFile", "attributes": "core.attributesFile"} {
			if _, err := os.Stat(filepath.Join(td, name)); err == nil {
				pins = append(pins, "-c", opt+"="+filepath.Join(td, name))
			}
		}
	}
	// Until the first successful export, the guest's git may rewrite
	// nothing here: no excludes file from the daemon's home either.
	if !hasOpt(pins, "core.excludesFile") {
		pins = append(pins, "-c", "core.excludesFile=/dev/null")
	}
	if !hasOpt(pins, "core.attributesFile") {
		pins = append(pins, "-c", "core.attributesFile=/dev/null")
	}

	if _, err := hg(nil, nil).run(ctx, append(pins, "read-tree", o.Base)...); err != nil {
		return fmt.Errorf("host export: %w", err)
	}
	// New files the guest's git would ignore are not part of the export
	// (tracked files are never ignored: check-ignore skips index entries).
	if len(sc.added) > 0 {
		ign, err := checkIgnore(ctx, hg, pins, sc.added)
		if err != nil {
			return err
		}
		if len(ign) > 0 {
			keep := sc.changed[:0]
			for _, p := range sc.changed {
				if !ign[p] {
					keep = append(keep, p)
				}
			}
			sc.changed = keep
		}
	}
	if len(sc.changed) > 0 {
		if err := checkAttrs(ctx, hg, pins, sc.changed); err != nil {
			return err
		}
	}

	// The changed files, as blobs.
	entries, gone, err := fetchBlobs(ctx, g, sc.changed, objs, o.ObjectFormat)
	if err != nil {
		return err
	}
	removals := append(append([]string(nil), sc.deleted...), gone...)
	if len(removals) > 0 {
		var in bytes.Buffer
		for _, p := range removals {
			in.WriteString(p)
			in.WriteByte(0)
		}
		if _, err := hg(&in, nil).run(ctx, append(pins, "update-index", "-z", "--force-remove", "--stdin")...); err != nil {
			return fmt.Errorf("host export: %w", err)
		}
	}
	if len(entries) > 0 {
		var in bytes.Buffer
		for _, e := range entries {
			fmt.Fprintf(&in, "%o %s\t%s\x00", e.mode, e.oid, e.path)
		}
		if _, err := hg(&in, nil).run(ctx, append(pins, "update-index", "-z", "--add", "--index-info")...); err != nil {
			return fmt.Errorf("%w: git refused the changed entries: %v", ErrFallback, err)
		}
	}

	// The patch, as ExportCommand makes it.
	patch := filepath.Join(td, "patch")
	mk := func(extra string) error {
		f, err := os.Create(patch)
		if err != nil {
			return err
		}
		defer f.Close()
		cw := &limitWriter{w: f, n: DefaultPatchLimit}
		_, err = hg(nil, cw).run(ctx, append(pins, "diff", "--cached", "--binary", "--full-index", "--unified=3",
			"--no-color", "--no-ext-diff", "--no-textconv", "--submodule=short",
			"--src-prefix=a/", "--dst-prefix=b/", extra, o.Base, "--")...)
		if cw.over {
			return fmt.Errorf("%w: the patch is larger than %d bytes", ErrTooLarge, int64(DefaultPatchLimit))
		}
		return err
	}
	if err := mk("-M"); err != nil {
		return fmt.Errorf("host export: %w", err)
	}
	if hasRename(patch) {
		chk := hostGit(o.GitDir, wt, append(append([]string(nil), env...), "GIT_INDEX_FILE="+filepath.Join(td, "check")))
		_, err := chk.run(ctx, "read-tree", o.Base)
		if err == nil {
			_, err = chk.run(ctx, "apply", "--cached", "--check", "--whitespace=nowarn", patch)
		}
		if err != nil {
			if err := mk("--no-renames"); err != nil {
				return fmt.Errorf("host export: %w", err)
			}
		}
	}
	f, err := os.Open(patch)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(out, f)
	return err
}

func hasOpt(pins []string, name string) bool {
	for _, p := range pins {
		if strings.HasPrefix(p, name+"=") {
			return true
		}
	}
	return false
}

// hasRename: does the patch have a line starting "rename from "?
func hasRename(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	carry := []byte{'\n'}
	for {
		n, err := f.Read(buf)
		chunk := append(carry, buf[:n]...)
		if bytes.Contains(chunk, []byte("\nrename from ")) {
			return true
		}
		if len(chunk) > 16 {
			carry = append([]byte(nil), chunk[len(chunk)-16:]...)
		} else {
			carry = append([]byte(nil), chunk...)
		}
		if err != nil {
			return false
		}
	}
}

// scan is a checked scan answer.
type scan struct {
	changed []string          // N and M paths (files to fetch)
	added   []string          // N paths (subject to ignore rules)
	deleted []string          // D paths
	rules   map[string]uint32 // I paths (rule files) -> mode
}

// checkScan validates the guest's records.
func checkScan(recs []agent.ScanRecord) (*scan, error) {
	sc := &scan{rules: map[string]uint32{}}
	seen := map[string]bool{}
	n := 0
	for _, r := range recs {
		bad := func(why string) error {
			return fmt.Errorf("host export: the guest reported %q: %s", bounded(r.Path), why)
		}
		if len(r.Path) > agent.MaxScanPath {
			return nil, bad("path too long")
		}
		if r.Kind == agent.ScanRules {
			base := path.Base(r.Path)
			if r.Path != ".git/info/exclude" && r.Path != ".git/info/attributes" {
				if base != ".gitignore" && base != ".gitattributes" {
					return nil, bad("not a rules file")
				}
				if err := checkName(r.Path); err != nil {
					return nil, bad(err.Error())
				}
			}
			if _, dup := sc.rules[r.Path]; dup {
				return nil, bad("reported twice")
			}
			sc.rules[r.Path] = r.Mode
			continue
		}
		if err := checkName(r.Path); err != nil {
			return nil, bad(err.Error())
		}
		if seen[r.Path] {
			return nil, bad("reported twice")
		}
		seen[r.Path] = true
		if n++; n > HostExportMaxChanges {
			return nil, fmt.Errorf("host export: the guest reported more than %d changes", HostExportMaxChanges)
		}
		switch r.Kind {
		case agent.ScanNew, agent.ScanModified:
			if r.Mode != 0o100644 && r.Mode != 0o100755 && r.Mode != 0o120000 {
				return nil, bad(fmt.Sprintf("mode %o", r.Mode))
			}
			sc.changed = append(sc.changed, r.Path)
			if r.Kind == agent.ScanNew {
				sc.added = append(sc.added, r.Path)
			}
		case agent.ScanDeleted:
			sc.deleted = append(sc.deleted, r.Path)
		default:
			return nil, bad(fmt.Sprintf("kind %q", r.Kind))
		}
	}
	return sc, nil
}

// checkName is CheckPath.
func checkName(p string) error {
	// Control characters are allowed: git quotes them and ParsePatch
	// accepts quoted names, as with ExportCommand.
	return CheckPath(p)
}

func bounded(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// fetchRules writes the guest's rule files into wt (.git/info/exclude and
// attributes as td/exclude and td/attributes).
func fetchRules(ctx context.Context, g ExportGuest, rules map[string]uint32, wt, td string) error {
	paths := make([]string, 0, len(rules))
	for p := range rules {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	return fetchTar(ctx, g, paths, hostExportMaxRules, func(hdr *tar.Header, r io.Reader) error {
		if hdr.Typeflag != tar.TypeReg {
			return nil // a rule file that is a symlink is not read by git either
		}
		var dst string
		switch hdr.Name {
		case ".git/info/exclude":
			dst = filepath.Join(td, "exclude")
		case ".git/info/attributes":
			dst = filepath.Join(td, "attributes")
		default:
			dst = filepath.Join(wt, filepath.FromSlash(hdr.Name))
			if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
				return err
			}
		}
		f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|noFollow, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, r)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	})
}

// fetchTar fetches paths and calls fn for each entry, checking that every
// entry is one of paths, once, of at most limit bytes in all.
func fetchTar(ctx context.Context, g ExportGuest, paths []string, limit int64, fn func(*tar.Header, io.Reader) error) error {
	want := make(map[string]bool, len(paths))
	for _, p := range paths {
		want[p] = true
	}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := g.Fetch(ctx, paths, pw, limit+64<<10)
		pw.CloseWithError(err)
		done <- err
	}()
	err := func() error {
		tr := tar.NewReader(pr)
		var total int64
		for {
			hdr, err := tr.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return fmt.Errorf("host export: the guest's files: %w", err)
			}
			if !want[hdr.Name] {
				return fmt.Errorf("host export: the guest sent %q, which was not asked for (or twice)", bounded(hdr.Name))
			}
			delete(want, hdr.Name)
			switch hdr.Typeflag {
			case tar.TypeReg, tar.TypeSymlink:
			default:
				return fmt.Errorf("host export: the guest sent %q of type %q", bounded(hdr.Name), hdr.Typeflag)
			}
			if hdr.Size < 0 || total+hdr.Size > limit {
				return fmt.Errorf("%w: the changed files are more than %d bytes", ErrFallback, limit)
			}
			total += hdr.Size
			if len(hdr.Linkname) > agent.MaxScanPath || strings.ContainsRune(hdr.Linkname, 0) {
				return fmt.Errorf("host export: the guest sent a bad symlink %q", bounded(hdr.Name))
			}
			if err := fn(hdr, io.LimitReader(tr, hdr.Size)); err != nil {
				return err
			}
		}
	}()
	if err != nil {
		pr.CloseWithError(err)
		<-done
		return err
	}
	io.Copy(io.Discard, pr)
	if ferr := <-done; ferr != nil {
		if errors.Is(ferr, agent.ErrLimitExceeded) {
			return fmt.Errorf("%w: the changed files are more than %d bytes", ErrFallback, limit)
		}
		return fmt.Errorf("host export: %w", ferr)
	}
	return nil
}

type indexEntry struct {
	mode uint32
	oid  string
	path string
}

// fetchBlobs fetches paths and writes each as a loose object into objs. A
// path the guest no longer has is returned in gone.
func fetchBlobs(ctx context.Context, g ExportGuest, paths []string, objs, format string) ([]indexEntry, []string, error) {
	var ents []indexEntry
	got := map[string]bool{}
	err := fetchTar(ctx, g, paths, hostExportMaxFiles, func(hdr *tar.Header, r io.Reader) error {
		var mode uint32
		var data io.Reader
		var size int64
		switch hdr.Typeflag {
		case tar.TypeSymlink:
			mode, data, size = 0o120000, strings.NewReader(hdr.Linkname), int64(len(hdr.Linkname))
		default:
			mode, data, size = 0o100644, r, hdr.Size
			if hdr.Mode&0o100 != 0 {
				mode = 0o100755
			}
		}
		oid, err := writeBlob(objs, format, data, size)
		if err != nil {
			return err
		}
		got[hdr.Name] = true
		ents = append(ents, indexEntry{mode, oid, hdr.Name})
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	var gone []string
	for _, p := range paths {
		if !got[p] {
			gone = append(gone, p)
		}
	}
	return ents, gone, nil
}

// writeBlob writes a loose blob object of exactly size bytes from r.
func writeBlob(objs, format string, r io.Reader, size int64) (string, error) {
	var h hash.Hash = sha1.New()
	if format == "sha256" {
		h = sha256.New()
	}
	tmp, err := os.CreateTemp(objs, "tmp-obj-")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	zw, _ := zlib.NewWriterLevel(tmp, zlib.BestSpeed)
	w := io.MultiWriter(h, zw)
	fmt.Fprintf(w, "blob %d\x00", size)
	n, err := io.Copy(w, r)
	if err == nil && n != size {
		err = fmt.Errorf("short file (%d of %d bytes)", n, size)
	}
	if cerr := zw.Close(); err == nil {
		err = cerr
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("host export: blob: %w", err)
	}
	oid := hex.EncodeToString(h.Sum(nil))
	dir := filepath.Join(objs, oid[:2])
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, oid[2:])); err != nil {
		return "", err
	}
	return oid, nil
}

// checkIgnore returns the paths the ignore rules exclude.
func checkIgnore(ctx context.Context, hg func(io.Reader, io.Writer) gitCmd, pins, paths []string) (map[string]bool, error) {
	var in bytes.Buffer
	for _, p := range paths {
		in.WriteString(p)
		in.WriteByte(0)
	}
	out, err := hg(&in, nil).run(ctx, append(pins, "check-ignore", "-z", "--stdin")...)
	if err != nil && exitCode(err) != 1 { // 1: none ignored
		return nil, fmt.Errorf("host export: %w", err)
	}
	ign := map[string]bool{}
	for _, p := range splitZ(out) {
		ign[p] = true
	}
	return ign, nil
}

// checkAttrs falls back when a conversion attribute applies to a path.
func checkAttrs(ctx context.Context, hg func(io.Reader, io.Writer) gitCmd, pins, paths []string) error {
	var in bytes.Buffer
	for _, p := range paths {
		in.WriteString(p)
		in.WriteByte(0)
	}
	out, err := hg(&in, nil).run(ctx, append(append(pins, "check-attr", "-z", "--stdin"), conversionAttrs...)...)
	if err != nil {
		return fmt.Errorf("host export: %w", err)
	}
	f := splitZ(out) // path, attr, value triples
	for i := 0; i+2 < len(f); i += 3 {
		if v := f[i+2]; v != "unspecified" && v != "unset" {
			return fmt.Errorf("%w: %s has %s=%s", ErrFallback, bounded(f[i]), f[i+1], v)
		}
	}
	return nil
}

// limitWriter passes at most n bytes and remembers whether more came.
type limitWriter struct {
	w    io.Writer
	n    int64
	over bool
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.n {
		l.over = true
		return 0, errors.New("over the limit")
	}
	l.n -= int64(len(p))
	return l.w.Write(p)
}

const noFollow = unix.O_NOFOLLOW
