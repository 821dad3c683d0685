package vm

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/errdefs"
)

// File operations on a running VM, for programs (the MCP server, the SDK)
// that read and write single files rather than ship a workspace. What
// comes from the guest is untrusted: sizes and counts are bounded.

const (
	// MaxFileRead bounds one ReadFile (a larger file comes truncated).
	MaxFileRead = 16 << 20
	// MaxFileWrite bounds one WriteFile.
	MaxFileWrite = 256 << 20
	// MaxDirEntries bounds one ListDir.
	MaxDirEntries = 10000
)

func filePath(p string) (string, error) {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" || strings.ContainsAny(p, "\x00\n") {
		return "", errdefs.InvalidArgument(fmt.Sprintf("path %q: want an absolute, clean path other than /", p))
	}
	return p, nil
}

func (m *Manager) runningAgent(ctx context.Context, name string) (*record, *agent.Client, error) {
	r, err := m.get(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	if st := m.derive(ctx, r); st != StateRunning {
		return nil, nil, errdefs.NotRunning(fmt.Sprintf("vm %s is %s, not running", r.row.Name, st))
	}
	c, err := m.agent(ctx, r)
	if err != nil {
		return nil, nil, err
	}
	return r, c, nil
}

// ReadFile returns up to max bytes (at most MaxFileRead) of a regular file
// in a running VM (a symlink is not followed: its target is returned as
// Link). Truncated is set when the file is longer.
func (m *Manager) ReadFile(ctx context.Context, name, p string, max int64) (api.FileContent, error) {
	p, err := filePath(p)
	if err != nil {
		return api.FileContent{}, err
	}
	if max <= 0 || max > MaxFileRead {
		max = MaxFileRead
	}
	_, c, err := m.runningAgent(ctx, name)
	if err != nil {
		return api.FileContent{}, err
	}
	var buf bytes.Buffer
	// A tar header (and a PAX one for long names) before the content.
	gerr := c.GetTar(ctx, p, &buf, max+8<<10)
	if gerr != nil && !errors.Is(gerr, agent.ErrLimitExceeded) {
		var re *agent.RemoteError
		if errors.As(gerr, &re) && strings.Contains(re.Message, "no such file") {
			return api.FileContent{}, errdefs.NotFound(fmt.Sprintf("vm %s: %s: no such file", name, p))
		}
		return api.FileContent{}, fmt.Errorf("vm %s: read %s: %w", name, p, gerr)
	}
	tr := tar.NewReader(&buf)
	hdr, err := tr.Next()
	if err != nil {
		return api.FileContent{}, fmt.Errorf("vm %s: read %s: the guest sent no file: %w", name, p, err)
	}
	out := api.FileContent{Path: p, Mode: fmt.Sprintf("%04o", hdr.Mode&0o7777), Size: hdr.Size, ModTime: hdr.ModTime.UTC()}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA:
		out.Type = "file"
	case tar.TypeSymlink:
		out.Type, out.Link = "symlink", hdr.Linkname
		return out, nil
	case tar.TypeDir:
		return api.FileContent{}, errdefs.InvalidArgument(fmt.Sprintf("vm %s: %s is a directory (list it instead)", name, p))
	default:
		return api.FileContent{}, errdefs.InvalidArgument(fmt.Sprintf("vm %s: %s is not a regular file", name, p))
	}
	data, rerr := io.ReadAll(io.LimitReader(tr, max))
	if rerr != nil && !errors.Is(rerr, io.ErrUnexpectedEOF) {
		return api.FileContent{}, fmt.Errorf("vm %s: read %s: %w", name, p, rerr)
	}
	out.Data = data
	out.Truncated = int64(len(data)) < hdr.Size
	return out, nil
}

// WriteFile writes r (size bytes, at most MaxFileWrite) as the regular file
// p in a running VM with mode (0: 0644), replacing what is there (a
// directory is refused); missing parent directories are created.
func (m *Manager) WriteFile(ctx context.Context, name, p string, r io.Reader, size int64, mode fs.FileMode) error {
	p, err := filePath(p)
	if err != nil {
		return err
	}
	if size < 0 || size > MaxFileWrite {
		return errdefs.InvalidArgument(fmt.Sprintf("write %s: size %d: at most %d bytes", p, size, MaxFileWrite))
	}
	if mode == 0 {
		mode = 0o644
	}
	if mode&^fs.ModePerm != 0 {
		return errdefs.InvalidArgument(fmt.Sprintf("write %s: mode %o: permission bits only", p, mode))
	}
	_, c, err := m.runningAgent(ctx, name)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: path.Base(p), Size: size, Mode: int64(mode), ModTime: time.Now()})
		if err == nil {
			var n int64
			n, err = io.Copy(tw, io.LimitReader(r, size))
			if err == nil && n < size {
				err = fmt.Errorf("write %s: %d of %d bytes", p, n, size)
			}
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	if err := c.PutTar(ctx, path.Dir(p), pr); err != nil {
		pr.CloseWithError(err)
		var re *agent.RemoteError
		if errors.As(err, &re) && strings.Contains(re.Message, "directory is in the way") {
			return errdefs.Conflict(fmt.Sprintf("vm %s: %s is a directory", name, p))
		}
		return fmt.Errorf("vm %s: write %s: %w", name, p, err)
	}
	return nil
}

// ListDir lists a directory of a running VM (not recursively), at most
// MaxDirEntries entries, sorted by name.
func (m *Manager) ListDir(ctx context.Context, name, p string) (api.DirListing, error) {
	if p != "/" {
		var err error
		if p, err = filePath(p); err != nil {
			return api.DirListing{}, err
		}
	}
	_, c, err := m.runningAgent(ctx, name)
	if err != nil {
		return api.DirListing{}, err
	}
	// find prints one NUL-ended record per entry: type, size, mode, mtime,
	// name (GNU find, in every Debian root: findutils is essential).
	var out, errb limitedBuf
	out.n, errb.n = MaxDirEntries*600, 4<<10
	proc, err := c.Exec(ctx, agent.ExecRequest{
		Argv:   []string{"find", p, "-mindepth", "1", "-maxdepth", "1", "-printf", `%y %s %m %T@ %f\0`},
		Stdout: &out, Stderr: &errb,
	})
	if err != nil {
		return api.DirListing{}, fmt.Errorf("vm %s: list %s: %w", name, p, err)
	}
	st, err := proc.Wait()
	if err != nil {
		return api.DirListing{}, fmt.Errorf("vm %s: list %s: %w", name, p, err)
	}
	if st.Code != 0 {
		msg := strings.TrimSpace(errb.String())
		if strings.Contains(msg, "No such file") {
			return api.DirListing{}, errdefs.NotFound(fmt.Sprintf("vm %s: %s: no such directory", name, p))
		}
		return api.DirListing{}, fmt.Errorf("vm %s: list %s: find exit %d: %s", name, p, st.Code, msg)
	}
	l := api.DirListing{Path: p, Truncated: out.over}
	for _, rec := range bytes.Split(out.b.Bytes(), []byte{0}) {
		f := strings.SplitN(string(rec), " ", 5)
		if len(f) != 5 || f[4] == "" {
			continue // the last, empty or cut record
		}
		if len(l.Entries) == MaxDirEntries {
			l.Truncated = true
			break
		}
		size, _ := strconv.ParseInt(f[1], 10, 64)
		sec, _ := strconv.ParseFloat(f[3], 64)
		e := api.DirEntry{Name: f[4], Size: size, Mode: f[2], ModTime: time.Unix(int64(sec), 0).UTC()}
		e.Type = map[string]string{"f": "file", "d": "dir", "l": "symlink"}[f[0]]
		if e.Type == "" {
			e.Type = "other"
		}
		l.Entries = append(l.Entries, e)
	}
	sortEntries(l.Entries)
	return l, nil
}

func sortEntries(es []api.DirEntry) {
	sort.Slice(es, func(i, j int) bool { return es[i].Name < es[j].Name })
}

// limitedBuf keeps at most n bytes and remembers whether more came.
type limitedBuf struct {
	b    bytes.Buffer
	n    int
	over bool
}

func (l *limitedBuf) Write(p []byte) (int, error) {
	if room := l.n - l.b.Len(); len(p) > room {
		l.over = true
		if room > 0 {
			l.b.Write(p[:room])
		}
		return len(p), nil
	}
	return l.b.Write(p)
}

func (l *limitedBuf) String() string { return l.b.String() }
