package workspace

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/banger-sh/banger/internal/errdefs"
)

// DefaultPatchLimit bounds a patch when ParsePatch is given no limit. The
// patch is held in memory once (parsing keeps at most a line of it), plus
// about 150 bytes per changed file.
const DefaultPatchLimit = 512 << 20

// ErrRejected is matched (errors.Is) by every error about a patch that is
// refused for safety (a path leaving the tree, into .git, through a
// symlink, too large, malformed). Such errors also match
// errdefs.ErrInvalidArgument.
var ErrRejected = errors.New("patch rejected")

// ErrTooLarge is matched (errors.Is), besides ErrRejected, by the error
// about a patch larger than the limit it was read with.
var ErrTooLarge = errors.New("patch too large")

// RejectError says why a patch was refused.
type RejectError struct {
	Path     string // the offending path, when there is one
	Reason   string
	tooLarge bool
}

func (e *RejectError) Error() string {
	if e.Path != "" {
		return fmt.Sprintf("export patch rejected: %s: %s", quoteName(e.Path), e.Reason)
	}
	return "export patch rejected: " + e.Reason
}

// Is makes a RejectError match ErrRejected and errdefs.ErrInvalidArgument
// (and ErrTooLarge for one about the size).
func (e *RejectError) Is(target error) bool {
	return target == ErrRejected || target == errdefs.ErrInvalidArgument || (e.tooLarge && target == ErrTooLarge)
}

func reject(path, format string, a ...any) error {
	return &RejectError{Path: path, Reason: fmt.Sprintf(format, a...)}
}

// ChangeKind is what happened to a file.
type ChangeKind string

const (
	Modified    ChangeKind = "modified"
	Added       ChangeKind = "added"
	Deleted     ChangeKind = "deleted"
	Renamed     ChangeKind = "renamed"
	Copied      ChangeKind = "copied"
	ModeChanged ChangeKind = "mode changed" // only the mode changed
)

// Change is one file of a patch.
type Change struct {
	Kind    ChangeKind
	Path    string // the path after the change (the removed path for Deleted)
	OldPath string // the source of a rename or copy
	OldMode string // "100644", "100755", "120000" ("" when unknown/unchanged)
	NewMode string
	Binary  bool // content given as a git binary patch
	Symlink bool // a symlink before or after
	// ModeChange is set when the file's mode changed (exec bit, or a type
	// change between file and symlink), whatever the Kind.
	ModeChange bool
}

// Patch is a validated export patch.
type Patch struct {
	raw     chunks // the patch text, as read
	Changes []Change
}

// Empty reports whether the patch changes nothing.
func (p *Patch) Empty() bool { return p == nil || len(p.Changes) == 0 }

// Size is the length of the patch text.
func (p *Patch) Size() int64 {
	if p == nil {
		return 0
	}
	return p.raw.size
}

// reader reads the patch text.
func (p *Patch) reader() io.Reader { return p.raw.reader() }

// chunks holds bytes in blocks that double up to 4 MiB: reading a patch
// of unknown length costs its length, not twice it as a growing slice
// would, and no block is ever copied.
type chunks struct {
	blocks [][]byte
	size   int64
}

func (c *chunks) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if len(c.blocks) == 0 || len(c.blocks[len(c.blocks)-1]) == cap(c.blocks[len(c.blocks)-1]) {
			next := 64 << 10
			if k := len(c.blocks); k > 0 {
				next = min(2*cap(c.blocks[k-1]), 4<<20)
			}
			c.blocks = append(c.blocks, make([]byte, 0, next))
		}
		last := &c.blocks[len(c.blocks)-1]
		k := min(len(p), cap(*last)-len(*last))
		*last = append(*last, p[:k]...)
		p = p[k:]
	}
	c.size += int64(n)
	return n, nil
}

func (c *chunks) reader() io.Reader {
	rs := make([]io.Reader, len(c.blocks))
	for i, b := range c.blocks {
		rs[i] = bytes.NewReader(b)
	}
	return io.MultiReader(rs...)
}

func (c *chunks) writeTo(w io.Writer) error {
	for _, b := range c.blocks {
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

// Paths lists every path the patch touches (sources of renames included),
// sorted.
func (p *Patch) Paths() []string {
	var out []string
	for _, c := range p.Changes {
		out = append(out, c.Path)
		if c.OldPath != "" {
			out = append(out, c.OldPath)
		}
	}
	sort.Strings(out)
	return out
}

// Summary is one line per change: a letter (M A D R C T) and the path.
func (p *Patch) Summary() string {
	var b strings.Builder
	for _, c := range p.Changes {
		letter := map[ChangeKind]string{Modified: "M", Added: "A", Deleted: "D", Renamed: "R", Copied: "C", ModeChanged: "T"}[c.Kind]
		if c.OldPath != "" {
			fmt.Fprintf(&b, "%s %s -> %s", letter, quoteName(c.OldPath), quoteName(c.Path))
		} else {
			fmt.Fprintf(&b, "%s %s", letter, quoteName(c.Path))
		}
		var tags []string
		if c.Binary {
			tags = append(tags, "binary")
		}
		if c.Symlink {
			tags = append(tags, "symlink")
		}
		if c.ModeChange && c.Kind != ModeChanged {
			tags = append(tags, "mode "+c.OldMode+" -> "+c.NewMode)
		}
		if len(tags) > 0 {
			fmt.Fprintf(&b, " (%s)", strings.Join(tags, ", "))
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// ParsePatch reads the output of ExportCommand (untrusted: it comes from
// the guest), at most limit bytes (DefaultPatchLimit when limit <= 0), and
// returns it validated: every path is relative, free of "..", outside .git
// (in any case), and not below a symlink the patch itself creates; a name
// git writes unquoted holds no control character (git quotes those, and
// would read such a name differently: it ends a name at a tab or CR). git's
// own reading of the patch (git apply --numstat, fed as the patch is read)
// must name exactly the same paths in the same order. Trees the patch is
// later applied to are checked again by Apply and Branch.
//
// The patch is parsed as it is read: memory is the patch text once, plus
// about 150 bytes per changed file (see ScanPatch to keep no text).
func ParsePatch(r io.Reader, limit int64) (*Patch, error) {
	if limit <= 0 {
		limit = DefaultPatchLimit
	}
	p := &Patch{}
	lim := &limitReader{r: r, n: limit}
	git := startCrossCheck()
	defer git.abort()
	in := io.TeeReader(lim, io.MultiWriter(&p.raw, git.in()))
	var cl changeList
	empty, err := parseStream(in, cl.add)
	p.Changes = cl.slice()
	if lim.over {
		return nil, tooLarge(limit)
	}
	if err != nil {
		return nil, readErr(err)
	}
	if empty {
		return &Patch{}, nil
	}
	if err := validateChanges(p.Changes); err != nil {
		return nil, err
	}
	if err := git.finish(p.Changes); err != nil {
		return nil, err
	}
	return p, nil
}

// ScanPatch validates a patch as ParsePatch does, except git's cross-check,
// and keeps none of its text: it is for a caller that only needs the list
// of changes (nothing can be applied from it). Memory is a line of the
// patch plus about 150 bytes per changed file.
func ScanPatch(r io.Reader, limit int64) ([]Change, error) {
	if limit <= 0 {
		limit = DefaultPatchLimit
	}
	lim := &limitReader{r: r, n: limit}
	var cl changeList
	empty, err := parseStream(lim, cl.add)
	out := cl.slice()
	if lim.over {
		return nil, tooLarge(limit)
	}
	if err != nil {
		return nil, readErr(err)
	}
	if empty {
		return nil, nil
	}
	if err := validateChanges(out); err != nil {
		return nil, err
	}
	return out, nil
}

// changeList collects Changes in blocks: appending to one slice would
// allocate about five times the final list (large slices grow by 1.25x).
type changeList struct {
	blocks [][]Change
	n      int
}

func (l *changeList) add(c Change) error {
	if k := len(l.blocks); k == 0 || len(l.blocks[k-1]) == cap(l.blocks[k-1]) {
		next := 16
		if k > 0 {
			next = min(2*cap(l.blocks[k-1]), 4096)
		}
		l.blocks = append(l.blocks, make([]Change, 0, next))
	}
	last := &l.blocks[len(l.blocks)-1]
	*last = append(*last, c)
	l.n++
	return nil
}

func (l *changeList) slice() []Change {
	if l.n == 0 {
		return nil
	}
	out := make([]Change, 0, l.n)
	for _, b := range l.blocks {
		out = append(out, b...)
	}
	l.blocks = nil
	return out
}

func tooLarge(limit int64) error {
	return &RejectError{Reason: fmt.Sprintf("larger than the limit of %d bytes", limit), tooLarge: true}
}

func readErr(err error) error {
	var re *RejectError
	if errors.As(err, &re) {
		return err
	}
	return fmt.Errorf("read export patch: %w", err)
}

// limitReader reads at most n bytes of r; one byte more sets over and
// ends the stream.
type limitReader struct {
	r    io.Reader
	n    int64
	over bool
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.over {
		return 0, io.EOF
	}
	if int64(len(p)) > l.n+1 {
		p = p[:l.n+1]
	}
	k, err := l.r.Read(p)
	if int64(k) > l.n {
		l.over = true
		k = int(l.n)
	}
	l.n -= int64(k)
	if l.over {
		return k, io.EOF
	}
	return k, err
}

func hunkCount(s, sign string) (int, error) {
	if !strings.HasPrefix(s, sign) {
		return 0, errors.New("bad range")
	}
	s = s[1:]
	if _, n, ok := strings.Cut(s, ","); ok {
		return strconv.Atoi(n)
	}
	if _, err := strconv.Atoi(s); err != nil {
		return 0, err
	}
	return 1, nil
}

// gitLineName extracts the name from "a/NAME b/NAME" (quoted or not) when
// both sides are the same, as git apply does.
func gitLineName(s string) (string, bool) {
	if strings.HasPrefix(s, `"`) {
		a, rest, err := splitQuoted(s)
		if err != nil || !strings.HasPrefix(rest, " ") {
			return "", false
		}
		b, err := unquotePath(rest[1:])
		if err != nil || !strings.HasPrefix(a, "a/") || !strings.HasPrefix(b, "b/") || a[2:] != b[2:] {
			return "", false
		}
		return a[2:], true
	}
	if len(s) < 7 || (len(s)-5)%2 != 0 || controlChar(s) >= 0 {
		return "", false
	}
	n := (len(s) - 5) / 2
	if s[:2] != "a/" || s[2+n:5+n] != " b/" || s[2:2+n] != s[5+n:] {
		return "", false
	}
	return s[2 : 2+n], true
}

// unquotePath decodes a name as git writes it: as is, or C-quoted. git
// quotes every name with a control character, so an unquoted one with
// such a character is not git's, and git would read it otherwise (it ends
// an unquoted name at a tab, CR, VT or FF): it is refused.
func unquotePath(s string) (string, error) {
	if !strings.HasPrefix(s, `"`) {
		if i := controlChar(s); i >= 0 {
			return "", fmt.Errorf("control character %q in an unquoted name", s[i])
		}
		return s, nil
	}
	n, rest, err := splitQuoted(s)
	if err != nil {
		return "", err
	}
	if rest != "" {
		return "", fmt.Errorf("text after a quoted name: %q", rest)
	}
	return n, nil
}

// controlChar is the index of the first control character (below 0x20,
// or DEL) of s, or -1.
func controlChar(s string) int {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return i
		}
	}
	return -1
}

// splitQuoted decodes the C-quoted string at the start of s and returns it
// and what follows.
func splitQuoted(s string) (string, string, error) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch c {
		case '"':
			return b.String(), s[i+1:], nil
		case '\\':
			i++
			if i >= len(s) {
				return "", "", errors.New("bad quoting")
			}
			switch e := s[i]; e {
			case 'a':
				b.WriteByte('\a')
			case 'b':
				b.WriteByte('\b')
			case 't':
				b.WriteByte('\t')
			case 'n':
				b.WriteByte('\n')
			case 'v':
				b.WriteByte('\v')
			case 'f':
				b.WriteByte('\f')
			case 'r':
				b.WriteByte('\r')
			case '"', '\\':
				b.WriteByte(e)
			default:
				if e < '0' || e > '3' || i+2 >= len(s) {
					return "", "", errors.New("bad quoting")
				}
				v, err := strconv.ParseUint(s[i:i+3], 8, 8)
				if err != nil {
					return "", "", errors.New("bad quoting")
				}
				b.WriteByte(byte(v))
				i += 2
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", "", errors.New("unterminated quoted name")
}

// CheckPath reports whether p may be written by a patch: relative, no
// empty, "." or ".." component, no NUL, and no component that is .git in
// any case (or a name some filesystems treat as .git: trailing dots or
// spaces, the 8.3 short name GIT~1).
func CheckPath(p string) error {
	if p == "" {
		return reject(p, "empty path")
	}
	if strings.HasPrefix(p, "/") {
		return reject(p, "absolute path")
	}
	if strings.ContainsRune(p, 0) {
		return reject(p, "NUL in path")
	}
	for rest, more := p, true; more; {
		var el string
		el, rest, more = strings.Cut(rest, "/")
		switch el {
		case "":
			return reject(p, "empty path component")
		case ".", "..":
			return reject(p, "%q component", el)
		}
		t := strings.ToLower(strings.TrimRight(el, ". "))
		if t == ".git" || t == "git~1" {
			return reject(p, "path into .git")
		}
	}
	return nil
}

// validateChanges checks every path and that no path lies below a symlink
// the patch creates (git applies deletions first, so a directory replaced
// by a symlink is fine as long as nothing is written below it).
func validateChanges(cs []Change) error {
	links := map[string]bool{}
	for _, c := range cs {
		if err := CheckPath(c.Path); err != nil {
			return err
		}
		if c.OldPath != "" {
			if err := CheckPath(c.OldPath); err != nil {
				return err
			}
		}
		if c.Kind != Deleted && c.NewMode == "120000" {
			links[c.Path] = true
		}
	}
	// A path appears twice only for a type change (file <-> symlink):
	// deleted as one type, added as the other. (Sorted indices, not a
	// map: 4 bytes per file.)
	order := make([]int32, len(cs))
	for i := range order {
		order[i] = int32(i)
	}
	key := func(i int32) (string, bool) { return cs[i].Path, cs[i].Kind == Deleted }
	slices.SortFunc(order, func(a, b int32) int {
		pa, da := key(a)
		pb, db := key(b)
		if c := strings.Compare(pa, pb); c != 0 {
			return c
		}
		switch {
		case da == db:
			return int(a - b)
		case da:
			return -1
		}
		return 1
	})
	for i := 1; i < len(order); i++ {
		pa, da := key(order[i-1])
		pb, db := key(order[i])
		if pa == pb && da == db {
			return reject(pb, "changed twice in one patch")
		}
	}
	for _, c := range cs {
		if c.Kind == Deleted {
			continue
		}
		for d := parentDir(c.Path); d != ""; d = parentDir(d) {
			if links[d] {
				return reject(c.Path, "written below %s, a symlink the patch creates", quoteName(d))
			}
		}
	}
	return nil
}

func parentDir(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return ""
	}
	return p[:i]
}

// crossCheck has git parse the patch (git apply --numstat, which applies
// nothing) while ParsePatch reads it, and requires git to name exactly the
// paths we parsed, in the same order: git is what will apply the patch, so
// git's reading is the one that must be safe. The patch is fed to git as
// it is read and git's answer is read as a stream: nothing is buffered.
type crossCheck struct {
	dir    string
	inW    *io.PipeWriter
	outR   *io.PipeReader
	sink   stickyWriter
	done   chan error
	waited bool
	err    error // git's, once waited
	failed error // could not start: reported by finish
}

func startCrossCheck() *crossCheck {
	x := &crossCheck{done: make(chan error, 1)}
	dir, err := os.MkdirTemp("", "banger-patch-")
	if err != nil {
		x.failed = err
		x.sink.err = err
		return x
	}
	x.dir = dir
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	x.inW, x.outR, x.sink.w = inW, outR, inW
	g := gitCmd{dir: dir, stdin: inR, out: outW, env: []string{
		"GIT_CEILING_DIRECTORIES=" + filepath.Dir(dir),
	}}
	go func() {
		_, err := g.run(context.Background(), "apply", "--numstat", "-z", "-")
		inR.CloseWithError(errors.New("git apply exited")) // unblocks our writes
		outW.CloseWithError(err)                           // nil: EOF
		x.done <- err
	}()
	return x
}

// in is where the patch goes as it is read; git failing does not fail
// the writes (finish reports it).
func (x *crossCheck) in() io.Writer { return &x.sink }

// finish ends git's input and compares git's reading with cs.
func (x *crossCheck) finish(cs []Change) error {
	if x.failed != nil {
		return x.failed
	}
	x.inW.Close()
	defer x.outR.Close() // an early return: git's further output fails
	// One record per file: "added\tdeleted\tname\0" (the new name of a
	// rename or copy; its source comes from the same "rename from" /
	// "copy from" lines we parsed).
	br := bufio.NewReaderSize(x.outR, 4096)
	i := 0
	var rec []byte
	for {
		frag, err := br.ReadSlice(0)
		rec = append(rec, frag...)
		if len(rec) > maxPatchLine {
			return reject("", "unexpected git apply --numstat output")
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) && len(rec) == 0 {
			break
		}
		if errors.Is(err, io.EOF) {
			return reject("", "unexpected git apply --numstat output")
		}
		if err != nil { // git failed: its error, stderr included
			return &RejectError{Reason: fmt.Sprintf("git cannot read it: %v", err)}
		}
		_, rest, ok1 := bytes.Cut(rec[:len(rec)-1], []byte{'\t'})
		_, name, ok2 := bytes.Cut(rest, []byte{'\t'})
		if !ok1 || !ok2 {
			return reject("", "unexpected git apply --numstat output")
		}
		if i >= len(cs) || cs[i].Path != string(name) {
			return reject("", "git reads other file names than the patch's headers (at file %d)", i+1)
		}
		rec = rec[:0]
		i++
	}
	if err := x.wait(); err != nil {
		return &RejectError{Reason: fmt.Sprintf("git cannot read it: %v", err)}
	}
	if i != len(cs) {
		return reject("", "git reads other file names than the patch's headers (%d vs %d names)", i, len(cs))
	}
	return nil
}

// wait waits for git and returns its error.
func (x *crossCheck) wait() error {
	if !x.waited {
		x.err, x.waited = <-x.done, true
	}
	return x.err
}

// abort stops git if it still runs and removes its directory.
func (x *crossCheck) abort() {
	if x.dir == "" {
		return
	}
	x.inW.CloseWithError(errors.New("patch refused"))
	x.outR.Close()
	x.wait()
	os.RemoveAll(x.dir)
}

// stickyWriter passes writes to w until one fails, then swallows them.
type stickyWriter struct {
	w   io.Writer
	err error
}

func (s *stickyWriter) Write(p []byte) (int, error) {
	if s.err == nil {
		_, s.err = s.w.Write(p)
	}
	return len(p), nil
}
