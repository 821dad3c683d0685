package workspace

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// The patch is parsed as a stream, one line at a time: what is kept of a
// line is at most maxPatchLine bytes (enough for any header line: two
// C-quoted paths of PATH_MAX bytes), and only a line's first bytes matter
// in hunks and binary data, so memory does not grow with the patch (the
// list of changes aside).
const maxPatchLine = 64 << 10

// lineReader reads a patch line by line. line is the current line without
// its "\n", cut to maxPatchLine bytes (long says it was cut); ok is false
// past the last line or after a read error (err).
type lineReader struct {
	br   *bufio.Reader
	buf  []byte
	line []byte
	long bool
	ok   bool
	n    int // the current line's number, from 1
	err  error
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, maxPatchLine), buf: make([]byte, 0, 4096)}
}

// next moves to the next line and reports whether there is one.
func (lr *lineReader) next() bool {
	lr.buf, lr.long, lr.line = lr.buf[:0], false, nil
	got := false
	for {
		frag, err := lr.br.ReadSlice('\n')
		if len(frag) > 0 {
			got = true
			if room := maxPatchLine - len(lr.buf); room > 0 {
				if len(frag) > room {
					lr.buf, lr.long = append(lr.buf, frag[:room]...), true
				} else {
					lr.buf = append(lr.buf, frag...)
				}
			} else {
				lr.long = true
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			lr.err = err
			lr.ok = false
			return false
		}
		break
	}
	if !got {
		lr.ok = false
		return false
	}
	lr.n++
	lr.line = bytes.TrimSuffix(lr.buf, []byte{'\n'})
	lr.ok = true
	return true
}

// header returns the current line as a header line: whole, or an error.
func (lr *lineReader) header() (string, error) {
	if lr.long {
		return "", reject("", "line %d: a header line longer than %d bytes", lr.n, maxPatchLine)
	}
	return string(lr.line), nil
}

func isBlank(b []byte) bool { return len(bytes.TrimSpace(b)) == 0 }

// parseStream parses a git diff (as written by git diff --binary) from r.
// empty is true when r holds only white space.
func parseStream(r io.Reader, each func(Change) error) (empty bool, err error) {
	lr := newLineReader(r)
	lr.next()
	// Only white space: an empty patch. White space first, then more: the
	// first line is wrong.
	blank := 0
	for lr.ok && isBlank(lr.line) {
		if blank == 0 {
			blank = lr.n
		}
		lr.next()
	}
	if lr.err != nil {
		return false, lr.err
	}
	if !lr.ok {
		return true, nil
	}
	if blank != 0 {
		return false, reject("", "line %d: expected \"diff --git\", got %.60q", blank, "")
	}
	for lr.ok {
		if !bytes.HasPrefix(lr.line, []byte("diff --git ")) {
			return false, reject("", "line %d: expected \"diff --git\", got %.60q", lr.n, lr.line)
		}
		c, err := parseSection(lr)
		if err != nil {
			return false, err
		}
		if err := each(c); err != nil {
			return false, err
		}
	}
	return false, lr.err
}

// parseSection parses the section whose "diff --git" line is current and
// leaves lr on the line after it.
func parseSection(lr *lineReader) (Change, error) {
	var c Change
	start := lr.n
	first, err := lr.header()
	if err != nil {
		return c, err
	}
	gitLine := strings.TrimPrefix(first, "diff --git ")
	var minus, plus, renFrom, renTo, cpFrom, cpTo string
	var haveMinus, havePlus, newFile, deleted, rename, cp bool
	var oldMode, newMode, idxMode string
	hasBody := false
	bad := func(format string, a ...any) error {
		return reject("", "line %d: %s", lr.n, fmt.Sprintf(format, a...))
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
header:
	for lr.next() {
		raw := lr.line
		if bytes.HasPrefix(raw, []byte("diff --git ")) || bytes.HasPrefix(raw, []byte("@@ ")) ||
			string(raw) == "GIT binary patch" || bytes.HasPrefix(raw, []byte("Binary files ")) {
			break header
		}
		if lr.long {
			return c, reject("", "line %d: a header line longer than %d bytes", lr.n, maxPatchLine)
		}
		// Only names become strings: a section costs its Change and names.
		var err error
		if v, ok := bytes.CutPrefix(raw, []byte("old mode ")); ok {
			oldMode = internMode(v)
		} else if v, ok := bytes.CutPrefix(raw, []byte("new mode ")); ok {
			newMode = internMode(v)
		} else if v, ok := bytes.CutPrefix(raw, []byte("deleted file mode ")); ok {
			deleted, oldMode = true, internMode(v)
		} else if v, ok := bytes.CutPrefix(raw, []byte("new file mode ")); ok {
			newFile, newMode = true, internMode(v)
		} else if bytes.HasPrefix(raw, []byte("similarity index ")) || bytes.HasPrefix(raw, []byte("dissimilarity index ")) {
		} else if v, ok := bytes.CutPrefix(raw, []byte("rename from ")); ok {
			rename = true
			if renFrom, err = name(string(v)); err != nil {
				return c, err
			}
		} else if v, ok := bytes.CutPrefix(raw, []byte("rename to ")); ok {
			rename = true
			if renTo, err = name(string(v)); err != nil {
				return c, err
			}
		} else if v, ok := bytes.CutPrefix(raw, []byte("copy from ")); ok {
			cp = true
			if cpFrom, err = name(string(v)); err != nil {
				return c, err
			}
		} else if v, ok := bytes.CutPrefix(raw, []byte("copy to ")); ok {
			cp = true
			if cpTo, err = name(string(v)); err != nil {
				return c, err
			}
		} else if v, ok := bytes.CutPrefix(raw, []byte("index ")); ok {
			// "index OLD..NEW MODE": the mode when the section has no mode line.
			if m, ok := secondOfTwoFields(v); ok {
				idxMode = internMode(m)
			}
		} else if v, ok := bytes.CutPrefix(raw, []byte("--- ")); ok {
			if minus, haveMinus, err = prefixed(string(v), "a/"); err != nil {
				return c, err
			}
		} else if v, ok := bytes.CutPrefix(raw, []byte("+++ ")); ok {
			if plus, havePlus, err = prefixed(string(v), "b/"); err != nil {
				return c, err
			}
		} else {
			return c, bad("unexpected header line %.60q", raw)
		}
	}
	// Body: text hunks, or a binary patch, or nothing (mode, rename, empty).
body:
	for lr.ok {
		l := lr.line
		switch {
		case bytes.HasPrefix(l, []byte("diff --git ")):
			break body
		case bytes.HasPrefix(l, []byte("@@ ")):
			hasBody = true
			if err := skipHunk(lr); err != nil {
				return c, err
			}
		case string(l) == "GIT binary patch":
			c.Binary, hasBody = true, true
			lr.next()
			if err := skipBinary(lr); err != nil {
				return c, err
			}
		case bytes.HasPrefix(l, []byte("Binary files ")):
			return c, bad("binary change without its data (not made with --binary)")
		default:
			return c, bad("unexpected line %.60q", l)
		}
	}
	if lr.err != nil {
		return c, lr.err
	}
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
				return c, reject("", "line %d: cannot tell the file name from %.80q", start, gitLine)
			}
			oldName, newName = n, n
		}
	}
	switch {
	case (rename || cp) && (oldName == "" || newName == ""):
		return c, reject("", "line %d: rename or copy without both names", start)
	case rename || cp:
	case newFile && deleted:
		return c, reject("", "line %d: a file both created and deleted", start)
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
			return c, reject(newName, "names differ (%q, %q) without a rename", oldName, newName)
		}
	}
	if c.Path == "" {
		return c, reject("", "line %d: no file name", start)
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
			return c, reject(c.Path, "a submodule (gitlink) change: a nested repository cannot be exported; remove it from the workspace or export its files another way")
		default:
			return c, reject(c.Path, "unsupported file mode %q", m)
		}
	}
	return c, nil
}

// secondOfTwoFields returns the second of b's fields when it has exactly
// two (as bytes.Fields splits them; without allocating for ASCII).
func secondOfTwoFields(b []byte) ([]byte, bool) {
	for _, c := range b {
		if c >= 0x80 {
			f := bytes.Fields(b)
			if len(f) != 2 {
				return nil, false
			}
			return f[1], true
		}
	}
	var f [3][]byte
	n := 0
	for i := 0; i < len(b) && n < 3; {
		for i < len(b) && asciiSpace(b[i]) {
			i++
		}
		j := i
		for j < len(b) && !asciiSpace(b[j]) {
			j++
		}
		if j > i {
			f[n] = b[i:j]
			n++
		}
		i = j
	}
	if n != 2 {
		return nil, false
	}
	return f[1], true
}

func asciiSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// internMode returns a mode as a string: the constant for a known one, so
// that a Change holds no copy of it.
func internMode(m []byte) string {
	for _, k := range []string{"100644", "100755", "120000", "160000"} {
		if string(m) == k {
			return k
		}
	}
	return string(m)
}

// skipHunk checks the text hunk whose header ("@@ -a,b +c,d @@") is the
// current line against its line counts and leaves lr after it.
func skipHunk(lr *lineReader) error {
	h := string(lr.line) // the header may be cut: only its first fields count
	var oldN, newN int
	f := strings.Fields(h)
	if len(f) < 4 || f[3] != "@@" {
		return reject("", "line %d: bad hunk header %.60q", lr.n, h)
	}
	var err error
	if oldN, err = hunkCount(f[1], "-"); err == nil {
		newN, err = hunkCount(f[2], "+")
	}
	if err != nil {
		return reject("", "line %d: bad hunk header %.60q", lr.n, h)
	}
	lr.next()
	for oldN > 0 || newN > 0 {
		if !lr.ok {
			if lr.err != nil {
				return lr.err
			}
			return reject("", "truncated hunk")
		}
		l := lr.line
		switch {
		case len(l) == 0 || l[0] == ' ': // an empty line: an empty context line
			oldN--
			newN--
		case l[0] == '-':
			oldN--
		case l[0] == '+':
			newN--
		case l[0] == '\\':
		default:
			return reject("", "line %d: unexpected line in a hunk", lr.n)
		}
		if oldN < 0 || newN < 0 {
			return reject("", "line %d: hunk longer than its header says", lr.n)
		}
		lr.next()
	}
	if lr.ok && len(lr.line) > 0 && lr.line[0] == '\\' {
		lr.next() // "\ No newline at end of file" after the last line
	}
	return nil
}

// skipBinary skips the one or two "literal N"/"delta N" blocks of a git
// binary patch, each ended by an empty line, from the current line.
func skipBinary(lr *lineReader) error {
	for block := 0; block < 2; block++ {
		if !lr.ok {
			break
		}
		l := lr.line
		if !bytes.HasPrefix(l, []byte("literal ")) && !bytes.HasPrefix(l, []byte("delta ")) {
			if block == 0 {
				return reject("", "line %d: expected literal or delta", lr.n)
			}
			break
		}
		for lr.next() {
			l := lr.line
			if len(l) == 0 {
				break
			}
			if c := l[0]; !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
				return reject("", "line %d: bad binary patch line", lr.n)
			}
		}
		if !lr.ok {
			if lr.err != nil {
				return lr.err
			}
			return reject("", "truncated binary patch")
		}
		lr.next() // the empty line
	}
	return lr.err
}
