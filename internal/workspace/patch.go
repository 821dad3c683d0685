package workspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"banger/internal/errdefs"
)

// DefaultPatchLimit bounds a patch when ParsePatch is given no limit (the
// patch is held in memory).
const DefaultPatchLimit = 512 << 20

// ErrRejected is matched (errors.Is) by every error about a patch that is
// refused for safety (a path leaving the tree, into .git, through a
// symlink, too large, malformed). Such errors also match
// errdefs.ErrInvalidArgument.
var ErrRejected = errors.New("patch rejected")

// RejectError says why a patch was refused.
type RejectError struct {
	Path   string // the offending path, when there is one
	Reason string
}

func (e *RejectError) Error() string {
	if e.Path != "" {
		return fmt.Sprintf("export patch rejected: %s: %s", quoteName(e.Path), e.Reason)
	}
	return "export patch rejected: " + e.Reason
}

// Is makes a RejectError match ErrRejected and errdefs.ErrInvalidArgument.
func (e *RejectError) Is(target error) bool {
	return target == ErrRejected || target == errdefs.ErrInvalidArgument
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
	raw     []byte
	Changes []Change
}

// Empty reports whether the patch changes nothing.
func (p *Patch) Empty() bool { return p == nil || len(p.Changes) == 0 }

// Bytes is the patch text (do not modify).
func (p *Patch) Bytes() []byte { return p.raw }

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
// (in any case), and not below a symlink the patch itself creates. git's
// own reading of the patch (git apply --numstat) must name exactly the
// same paths. Trees the patch is later applied to are checked again by
// Apply and Branch.
func ParsePatch(r io.Reader, limit int64) (*Patch, error) {
	if limit <= 0 {
		limit = DefaultPatchLimit
	}
	raw, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read export patch: %w", err)
	}
	if int64(len(raw)) > limit {
		return nil, reject("", "larger than the limit of %d bytes", limit)
	}
	p := &Patch{raw: raw}
	if len(bytes.TrimSpace(raw)) == 0 {
		p.raw = nil
		return p, nil
	}
	if p.Changes, err = parseChanges(raw); err != nil {
		return nil, err
	}
	if err := validateChanges(p.Changes); err != nil {
		return nil, err
	}
	if err := crossCheck(p); err != nil {
		return nil, err
	}
	return p, nil
}

// parseChanges parses a git diff (as written by git diff --binary).
func parseChanges(raw []byte) ([]Change, error) {
	lines := strings.SplitAfter(string(raw), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	var out []Change
	i := 0
	for i < len(lines) {
		l := strings.TrimSuffix(lines[i], "\n")
		if !strings.HasPrefix(l, "diff --git ") {
			return nil, reject("", "line %d: expected \"diff --git\", got %.60q", i+1, l)
		}
		c, next, err := parseSection(lines, i)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
		i = next
	}
	return out, nil
}

func parseSection(lines []string, start int) (Change, int, error) {
	var c Change
	gitLine := strings.TrimPrefix(strings.TrimSuffix(lines[start], "\n"), "diff --git ")
	var minus, plus, renFrom, renTo, cpFrom, cpTo string
	var haveMinus, havePlus, newFile, deleted, rename, cp bool
	var oldMode, newMode, idxMode string
	hasBody := false
	i := start + 1
	bad := func(format string, a ...any) error {
		return reject("", "line %d: %s", i+1, fmt.Sprintf(format, a...))
	}
	name := func(s string) (string, error) {
		n, err := unquotePath(s)
		if err != nil {
			return "", bad("%v", err)
		}
		return n, nil
	}
	prefixed := func(s, prefix string) (string, bool, error) {
		s = strings.TrimSuffix(s, "\t") // git adds a tab after names with spaces
		if s == "/dev/null" {
			return "", false, nil
		}
		n, err := name(s)
		if err != nil {
			return "", false, err
		}
		if !strings.HasPrefix(n, prefix) {
			return "", false, bad("name %q lacks the %q prefix", n, prefix)
		}
		return n[len(prefix):], true, nil
	}
	var err error
header:
	for ; i < len(lines); i++ {
		l := strings.TrimSuffix(lines[i], "\n")
		switch {
		case strings.HasPrefix(l, "diff --git "), strings.HasPrefix(l, "@@ "),
			l == "GIT binary patch", strings.HasPrefix(l, "Binary files "):
			break header
		case strings.HasPrefix(l, "old mode "):
			oldMode = strings.TrimPrefix(l, "old mode ")
		case strings.HasPrefix(l, "new mode "):
			newMode = strings.TrimPrefix(l, "new mode ")
		case strings.HasPrefix(l, "deleted file mode "):
			deleted, oldMode = true, strings.TrimPrefix(l, "deleted file mode ")
		case strings.HasPrefix(l, "new file mode "):
			newFile, newMode = true, strings.TrimPrefix(l, "new file mode ")
		case strings.HasPrefix(l, "similarity index "), strings.HasPrefix(l, "dissimilarity index "):
		case strings.HasPrefix(l, "rename from "):
			rename = true
			if renFrom, err = name(strings.TrimPrefix(l, "rename from ")); err != nil {
				return c, 0, err
			}
		case strings.HasPrefix(l, "rename to "):
			rename = true
			if renTo, err = name(strings.TrimPrefix(l, "rename to ")); err != nil {
				return c, 0, err
			}
		case strings.HasPrefix(l, "copy from "):
			cp = true
			if cpFrom, err = name(strings.TrimPrefix(l, "copy from ")); err != nil {
				return c, 0, err
			}
		case strings.HasPrefix(l, "copy to "):
			cp = true
			if cpTo, err = name(strings.TrimPrefix(l, "copy to ")); err != nil {
				return c, 0, err
			}
		case strings.HasPrefix(l, "index "):
			if f := strings.Fields(l); len(f) == 3 {
				idxMode = f[2]
			}
		case strings.HasPrefix(l, "--- "):
			if minus, haveMinus, err = prefixed(strings.TrimPrefix(l, "--- "), "a/"); err != nil {
				return c, 0, err
			}
		case strings.HasPrefix(l, "+++ "):
			if plus, havePlus, err = prefixed(strings.TrimPrefix(l, "+++ "), "b/"); err != nil {
				return c, 0, err
			}
		default:
			return c, 0, bad("unexpected header line %.60q", l)
		}
	}
	// Body: text hunks, or a binary patch, or nothing (mode, rename, empty).
	for i < len(lines) {
		l := strings.TrimSuffix(lines[i], "\n")
		switch {
		case strings.HasPrefix(l, "diff --git "):
			goto done
		case strings.HasPrefix(l, "@@ "):
			hasBody = true
			n, err := skipHunk(lines, i)
			if err != nil {
				return c, 0, err
			}
			i = n
		case l == "GIT binary patch":
			c.Binary, hasBody = true, true
			n, err := skipBinary(lines, i+1)
			if err != nil {
				return c, 0, err
			}
			i = n
		case strings.HasPrefix(l, "Binary files "):
			return c, 0, bad("binary change without its data (not made with --binary)")
		default:
			return c, 0, bad("unexpected line %.60q", l)
		}
	}
done:
	// The names, from the most to the least explicit header.
	var oldName, newName string
	switch {
	case rename:
		c.Kind, oldName, newName = Renamed, renFrom, renTo
	case cp:
		c.Kind, oldName, newName = Copied, cpFrom, cpTo
	default:
		if haveMinus {
			oldName = minus
		}
		if havePlus {
			newName = plus
		}
		if oldName == "" && newName == "" {
			n, ok := gitLineName(gitLine)
			if !ok {
				return c, 0, reject("", "line %d: cannot tell the file name from %.80q", start+1, gitLine)
			}
			oldName, newName = n, n
		}
	}
	switch {
	case (rename || cp) && (oldName == "" || newName == ""):
		return c, 0, reject("", "line %d: rename or copy without both names", start+1)
	case rename || cp:
	case newFile && deleted:
		return c, 0, reject("", "line %d: a file both created and deleted", start+1)
	case newFile:
		c.Kind = Added
	case deleted:
		c.Kind = Deleted
	case oldMode != "" && newMode != "" && !hasBody:
		c.Kind = ModeChanged
	default:
		c.Kind = Modified
	}
	if c.Kind == Deleted {
		c.Path = oldName
		if c.Path == "" {
			c.Path = newName
		}
	} else {
		c.Path = newName
		if c.Path == "" {
			c.Path = oldName
		}
	}
	if (rename || cp) || (oldName != "" && newName != "" && oldName != newName) {
		c.OldPath = oldName
		if !rename && !cp {
			return c, 0, reject(newName, "names differ (%q, %q) without a rename", oldName, newName)
		}
	}
	if c.Path == "" {
		return c, 0, reject("", "line %d: no file name", start+1)
	}
	if idxMode != "" && oldMode == "" && newMode == "" {
		oldMode, newMode = idxMode, idxMode
	}
	c.OldMode, c.NewMode = oldMode, newMode
	c.ModeChange = oldMode != "" && newMode != "" && oldMode != newMode
	for _, m := range []string{oldMode, newMode} {
		switch m {
		case "", "100644", "100755":
		case "120000":
			c.Symlink = true
		case "160000":
			return c, 0, reject(c.Path, "a submodule (gitlink) change: a nested repository cannot be exported; remove it from the workspace or export its files another way")
		default:
			return c, 0, reject(c.Path, "unsupported file mode %q", m)
		}
	}
	return c, i, nil
}

// skipHunk checks a text hunk starting at lines[i] ("@@ -a,b +c,d @@")
// against its line counts and returns the index after it.
func skipHunk(lines []string, i int) (int, error) {
	h := strings.TrimSuffix(lines[i], "\n")
	var oldN, newN int
	f := strings.Fields(h)
	if len(f) < 4 || f[3] != "@@" {
		return 0, reject("", "line %d: bad hunk header %.60q", i+1, h)
	}
	var err error
	if oldN, err = hunkCount(f[1], "-"); err == nil {
		newN, err = hunkCount(f[2], "+")
	}
	if err != nil {
		return 0, reject("", "line %d: bad hunk header %.60q", i+1, h)
	}
	i++
	for oldN > 0 || newN > 0 {
		if i >= len(lines) {
			return 0, reject("", "truncated hunk")
		}
		l := lines[i]
		switch {
		case strings.HasPrefix(l, " ") || l == "\n":
			oldN--
			newN--
		case strings.HasPrefix(l, "-"):
			oldN--
		case strings.HasPrefix(l, "+"):
			newN--
		case strings.HasPrefix(l, `\`):
		default:
			return 0, reject("", "line %d: unexpected line in a hunk", i+1)
		}
		if oldN < 0 || newN < 0 {
			return 0, reject("", "line %d: hunk longer than its header says", i+1)
		}
		i++
	}
	if i < len(lines) && strings.HasPrefix(lines[i], `\`) {
		i++ // "\ No newline at end of file" after the last line
	}
	return i, nil
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

// skipBinary skips the one or two "literal N"/"delta N" blocks of a git
// binary patch, each ended by an empty line.
func skipBinary(lines []string, i int) (int, error) {
	for block := 0; block < 2; block++ {
		if i >= len(lines) {
			break
		}
		l := strings.TrimSuffix(lines[i], "\n")
		if !strings.HasPrefix(l, "literal ") && !strings.HasPrefix(l, "delta ") {
			if block == 0 {
				return 0, reject("", "line %d: expected literal or delta", i+1)
			}
			break
		}
		i++
		for ; i < len(lines); i++ {
			l := strings.TrimSuffix(lines[i], "\n")
			if l == "" {
				break
			}
			if c := l[0]; !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
				return 0, reject("", "line %d: bad binary patch line", i+1)
			}
		}
		if i >= len(lines) {
			return 0, reject("", "truncated binary patch")
		}
		i++ // the empty line
	}
	return i, nil
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
	if len(s) < 7 || (len(s)-5)%2 != 0 {
		return "", false
	}
	n := (len(s) - 5) / 2
	if s[:2] != "a/" || s[2+n:5+n] != " b/" || s[2:2+n] != s[5+n:] {
		return "", false
	}
	return s[2 : 2+n], true
}

// unquotePath decodes a name as git writes it: as is, or C-quoted.
func unquotePath(s string) (string, error) {
	if !strings.HasPrefix(s, `"`) {
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
	for _, el := range strings.Split(p, "/") {
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
	seen := map[string]bool{}
	for _, c := range cs {
		if err := CheckPath(c.Path); err != nil {
			return err
		}
		if c.OldPath != "" {
			if err := CheckPath(c.OldPath); err != nil {
				return err
			}
		}
		// A path appears twice only for a type change (file <-> symlink):
		// deleted as one type, added as the other.
		key := c.Path + "\x00del"
		if c.Kind != Deleted {
			key = c.Path + "\x00new"
		}
		if seen[key] {
			return reject(c.Path, "changed twice in one patch")
		}
		seen[key] = true
		if c.Kind != Deleted && c.NewMode == "120000" {
			links[c.Path] = true
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
// nothing) and requires it to name exactly the paths we parsed: git is
// what will apply it, so git's reading is the one that must be safe.
func crossCheck(p *Patch) error {
	dir, err := os.MkdirTemp("", "banger-patch-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	g := gitCmd{dir: dir, stdin: bytes.NewReader(p.raw), env: []string{
		"GIT_CEILING_DIRECTORIES=" + filepath.Dir(dir),
	}}
	out, err := g.run(context.Background(), "apply", "--numstat", "-z", "-")
	if err != nil {
		return &RejectError{Reason: fmt.Sprintf("git cannot read it: %v", err)}
	}
	// One record per file: "added\tdeleted\tname" (the new name of a
	// rename or copy; its source comes from the same "rename from" /
	// "copy from" lines we parsed).
	var theirs []string
	for _, rec := range splitZ(out) {
		f := strings.SplitN(rec, "\t", 3)
		if len(f) != 3 {
			return reject("", "unexpected git apply --numstat output")
		}
		if err := CheckPath(f[2]); err != nil {
			return err
		}
		theirs = append(theirs, f[2])
	}
	var ours []string
	for _, c := range p.Changes {
		ours = append(ours, c.Path)
	}
	sort.Strings(theirs)
	sort.Strings(ours)
	if strings.Join(theirs, "\x00") != strings.Join(ours, "\x00") {
		return reject("", "git reads other file names than the patch's headers (%d vs %d names)", len(theirs), len(ours))
	}
	return nil
}
