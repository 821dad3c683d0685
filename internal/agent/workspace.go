package agent

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"
)

// Workspace scan and fetch: how the host exports a workspace without
// running git in the guest (git under emulation re-derives the tree: 1.5 s
// for 160 files, 3-4 s for 11,000).
//
// At ship time the host writes ManifestFile into the workspace's .git: one
// record per shipped file or symlink, "<git mode> <size> <mtime seconds>
// <path>\x00" (git mode 100644, 100755 or 120000). ScanWorkspace asks the
// agent to walk the workspace in its own process (no git, no process per
// file) and to report what differs from the manifest, as records
// "<kind> <git mode> <size> <path>\x00":
//
//	N  a file or symlink the manifest does not have (new)
//	M  a manifest entry whose type, executable bit, size or mtime second
//	   changed (git's core.checkStat=minimal view)
//	D  a manifest entry that is gone (or no longer a file or symlink)
//	I  a regular .gitignore or .gitattributes anywhere, or .git/info/exclude
//	   or .git/info/attributes: the rules the guest's git would use
//	X  the walk gave up; the path field is the reason (a nested repository,
//	   more records than the host's limit): the host falls back to git in
//	   the guest
//
// FetchFiles then streams a tar of just the paths the host asks for. The
// host trusts none of it: the answers are bounded and every path is
// checked again on the host (workspace.HostExport).
const ManifestFile = "banger-manifest"

// Scan record kinds.
const (
	ScanNew      = 'N'
	ScanModified = 'M'
	ScanDeleted  = 'D'
	ScanRules    = 'I'
	ScanGiveUp   = 'X'
)

// ScanRecord is one record of ScanWorkspace, as the guest sent it (the
// caller validates paths).
type ScanRecord struct {
	Kind byte
	Mode uint32 // git mode: 0o100644, 0o100755, 0o120000
	Size int64
	Path string
}

// GitMode is the mode git records for fi: 100755 or 100644 for a regular
// file (owner's execute bit), 120000 for a symlink, 0 for anything else.
func GitMode(m fs.FileMode) uint32 {
	switch {
	case m&fs.ModeSymlink != 0:
		return 0o120000
	case m.IsRegular() && m&0o100 != 0:
		return 0o100755
	case m.IsRegular():
		return 0o100644
	}
	return 0
}

type manifestEntry struct {
	mode  uint32
	size  int64
	mtime int64
	seen  bool
}

// parseManifest reads ManifestFile records.
func parseManifest(b []byte) (map[string]*manifestEntry, error) {
	m := map[string]*manifestEntry{}
	for len(b) > 0 {
		nul := bytes.IndexByte(b, 0)
		if nul < 0 {
			return nil, errors.New("manifest: truncated record")
		}
		rec := string(b[:nul])
		b = b[nul+1:]
		f := strings.SplitN(rec, " ", 4)
		if len(f) != 4 {
			return nil, fmt.Errorf("manifest: bad record %q", rec)
		}
		mode, err1 := strconv.ParseUint(f[0], 8, 32)
		size, err2 := strconv.ParseInt(f[1], 10, 64)
		mt, err3 := strconv.ParseInt(f[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil || f[3] == "" {
			return nil, fmt.Errorf("manifest: bad record %q", rec)
		}
		m[f[3]] = &manifestEntry{mode: uint32(mode), size: size, mtime: mt}
	}
	return m, nil
}

// WarmTree reads every directory and inode under dir (getdents, and an
// fstatat relative to the directory's descriptor for each non-directory:
// no path walks, no sorting; no file contents but .git's index and pack
// indexes), so that the first git status, and the export's walk, find them
// in the guest's caches: on a freshly mounted work disk, git's "refresh
// index" pass costs 30x more the first time (each inode-table block a
// separate disk read under emulation; measured 0.29 s vs 0.011 s on 306
// files), while the index's stat data already matches (core.checkStat=minimal:
// size and mtime second, which mkfs.ext4 -d keeps). It returns how many
// entries it reached. Symbolic links are not followed; directories it
// cannot open are skipped. The agent runs it in the background after
// mounting a work disk.
//
// It replaced os.ReadDir (which sorts) plus DirEntry.Info (an lstat of the
// whole path) per entry: on the Go tree in a 1-vCPU guest, cold, 0.94-1.03 s
// against 1.21-1.58 s (hot 0.26-0.28 s against 0.42-0.50 s), and one worker
// was faster there than eight; on the host, hot, 51 ms against 67 ms
// (BenchmarkWarmTree). The agent runs a worker per CPU.
func WarmTree(dir string, workers int) int {
	for _, p := range []string{".git/index", ".git/objects/pack"} {
		fp := filepath.Join(dir, p)
		if fi, err := os.Stat(fp); err == nil && fi.IsDir() {
			if ents, err := os.ReadDir(fp); err == nil {
				for _, e := range ents {
					if strings.HasSuffix(e.Name(), ".idx") {
						readAll(filepath.Join(fp, e.Name()))
					}
				}
			}
		} else if err == nil {
			readAll(fp)
		}
	}
	const dirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	root, err := unix.Open(dir, dirFlags, 0)
	if err != nil {
		return 0
	}
	// The queue holds open directories: bounded, so that a huge tree
	// cannot exhaust the agent's descriptors (a directory that finds it
	// full is walked by the worker that found it, depth first).
	type openDir struct {
		fd   int
		path string // for os.File's own lstat where getdents gives no type
	}
	dirs := make(chan openDir, 512)
	var pending sync.WaitGroup
	var reached atomic.Int64
	var walk func(d openDir)
	walk = func(d openDir) {
		fd := d.fd
		f := os.NewFile(uintptr(fd), d.path)
		defer f.Close()
		var st unix.Stat_t
		for {
			ents, err := f.ReadDir(256)
			for _, e := range ents {
				reached.Add(1)
				if !e.IsDir() {
					unix.Fstatat(fd, e.Name(), &st, unix.AT_SYMLINK_NOFOLLOW) // the inode
					continue
				}
				sub, err := unix.Openat(fd, e.Name(), dirFlags, 0)
				if err != nil {
					continue
				}
				sd := openDir{sub, filepath.Join(d.path, e.Name())}
				pending.Add(1)
				select {
				case dirs <- sd:
				default:
					pending.Done()
					walk(sd)
				}
			}
			if err != nil {
				return
			}
		}
	}
	pending.Add(1)
	dirs <- openDir{root, dir}
	for range max(workers, 1) {
		go func() {
			idleThread()
			for d := range dirs {
				walk(d)
				pending.Done()
			}
		}()
	}
	pending.Wait()
	close(dirs)
	return int(reached.Load())
}

// warmWorkspace warms a freshly mounted work disk (WarmTree) and git's own
// program file (the first git of a boot pages it in from the root disk:
// ~0.15 s of a first git status on 306 files, after WarmTree).
//
// It runs at SCHED_IDLE (idleThread): on one vCPU the first command of a
// run must not wait for it (it did, by ~60 ms under emulation).
func warmWorkspace(dir string) {
	idleThread()
	for _, p := range []string{"/usr/bin/git", "/usr/local/bin/git"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			readAll(p)
			break
		}
	}
	WarmTree(dir, runtime.NumCPU())
}

// idleThread puts the calling goroutine on a thread of its own at
// SCHED_IDLE: it runs only when nothing else wants the CPU. The thread
// exits with the goroutine (it is never unlocked), so the policy goes
// with it.
func idleThread() {
	runtime.LockOSThread()
	unix.SchedSetAttr(0, &unix.SchedAttr{Policy: unix.SCHED_IDLE}, 0)
}

func readAll(p string) {
	if f, err := os.Open(p); err == nil {
		io.Copy(io.Discard, f)
		f.Close()
	}
}

// errGiveUp ends a walk after an X record.
var errGiveUp = errors.New("scan: gave up")

// ScanDir is the guest side of ScanWorkspace: it walks dir and writes the
// records of what differs from the manifest in dir/.git to w (at most
// limit change records, then an X record).
func ScanDir(dir string, limit int, w io.Writer) error {
	mb, err := os.ReadFile(filepath.Join(dir, ".git", ManifestFile))
	if err != nil {
		return fmt.Errorf("ws-scan: no manifest: %w", err)
	}
	man, err := parseManifest(mb)
	if err != nil {
		return fmt.Errorf("ws-scan: %w", err)
	}
	n := 0
	emit := func(kind byte, mode uint32, size int64, p string) error {
		if kind != ScanGiveUp && kind != ScanRules {
			n++
			if limit > 0 && n > limit {
				fmt.Fprintf(w, "%c 0 0 more than %d changes\x00", ScanGiveUp, limit)
				return errGiveUp
			}
		}
		_, err := fmt.Fprintf(w, "%c %o %d %s\x00", kind, mode, size, p)
		return err
	}
	giveUp := func(reason string) error {
		fmt.Fprintf(w, "%c 0 0 %s\x00", ScanGiveUp, reason)
		return errGiveUp
	}
	var walk func(rel string) error
	walk = func(rel string) error {
		ents, err := os.ReadDir(filepath.Join(dir, filepath.FromSlash(rel)))
		if err != nil {
			return err
		}
		for _, e := range ents {
			name := e.Name()
			p := name
			if rel != "" {
				p = rel + "/" + name
			}
			if name == ".git" {
				if rel != "" {
					return giveUp("a nested repository at " + strconv.Quote(p))
				}
				for _, r := range []string{".git/info/exclude", ".git/info/attributes"} {
					if fi, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(r))); err == nil && fi.Mode().IsRegular() {
						if err := emit(ScanRules, GitMode(fi.Mode()), fi.Size(), r); err != nil {
							return err
						}
					}
				}
				continue
			}
			t := e.Type()
			if t.IsDir() {
				if err := walk(p); err != nil {
					return err
				}
				continue
			}
			if !t.IsRegular() && t&fs.ModeSymlink == 0 {
				continue // git keeps no sockets, FIFOs or devices
			}
			fi, err := e.Info()
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				return err
			}
			mode := GitMode(fi.Mode())
			if mode == 0 {
				continue
			}
			if me := man[p]; me != nil {
				me.seen = true
				if me.mode != mode || me.size != fi.Size() || me.mtime != fi.ModTime().Unix() {
					if err := emit(ScanModified, mode, fi.Size(), p); err != nil {
						return err
					}
				}
			} else if err := emit(ScanNew, mode, fi.Size(), p); err != nil {
				return err
			}
			if (name == ".gitignore" || name == ".gitattributes") && fi.Mode().IsRegular() {
				if err := emit(ScanRules, mode, fi.Size(), p); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(""); err != nil {
		if errors.Is(err, errGiveUp) {
			return nil
		}
		return fmt.Errorf("ws-scan: %w", err)
	}
	gone := make([]string, 0)
	for p, me := range man {
		if !me.seen {
			gone = append(gone, p)
		}
	}
	sort.Strings(gone)
	for _, p := range gone {
		me := man[p]
		if err := emit(ScanDeleted, me.mode, me.size, p); err != nil {
			if errors.Is(err, errGiveUp) {
				return nil
			}
			return err
		}
	}
	return nil
}

// wsScan serves ScanWorkspace.
func (s *session) wsScan(st *yamux.Stream, dir string, limit int) {
	s.streamOut(st, "ws-scan", dir, func(w io.Writer) error {
		if unchangedSinceMount(dir) { // see watch.go: what the walk would find
			if _, err := os.Stat(filepath.Join(dir, ".git", ManifestFile)); err == nil {
				return nil
			}
		}
		return ScanDir(dir, limit, w)
	})
}

// getFiles serves FetchFiles: a tar of the regular files and symlinks
// named (relative to dir; missing ones and other types are left out).
func (s *session) getFiles(st *yamux.Stream, dir string, paths []string) {
	s.streamOut(st, "get-files", dir, func(w io.Writer) error { return WriteFiles(dir, paths, w) })
}

// WriteFiles is the guest side of FetchFiles: a tar of the regular files
// and symlinks among paths, relative to dir (os.Root: nothing outside dir
// is read). Missing paths and other types are left out.
func WriteFiles(dir string, paths []string, w io.Writer) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tw := tar.NewWriter(w)
	for _, p := range paths {
		if err := addFile(tw, root, p); err != nil {
			return err
		}
	}
	return tw.Close()
}

func addFile(tw *tar.Writer, root *os.Root, p string) error {
	fi, err := root.Lstat(p)
	if err != nil {
		return nil // gone (or not reachable inside the root): not sent
	}
	hdr := &tar.Header{Name: p, Mode: int64(fi.Mode().Perm()), ModTime: fi.ModTime(), Format: tar.FormatPAX}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := root.Readlink(p)
		if err != nil {
			return nil
		}
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
		return tw.WriteHeader(hdr)
	case fi.Mode().IsRegular():
		f, err := root.OpenFile(p, os.O_RDONLY, 0)
		if err != nil {
			return nil
		}
		defer f.Close()
		if fi, err = f.Stat(); err != nil || !fi.Mode().IsRegular() {
			return nil // replaced since the Lstat
		}
		hdr.Typeflag, hdr.Size = tar.TypeReg, fi.Size()
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
			return fmt.Errorf("%s: %w (file changed while read?)", p, err)
		}
	}
	return nil
}

// streamOut answers a request with an empty reply frame, the output of
// produce as chunks, an empty chunk, and a result frame (as get-tar does).
func (s *session) streamOut(st *yamux.Stream, op, dir string, produce func(io.Writer) error) {
	defer st.Close()
	if !filepath.IsAbs(dir) {
		writeFrame(st, reply{Error: fmt.Sprintf("%s: %q is not an absolute path", op, dir)})
		return
	}
	if err := writeFrame(st, reply{}); err != nil {
		return
	}
	go func() {
		io.Copy(io.Discard, st)
		st.SetWriteDeadline(time.Unix(1, 0))
	}()
	cw := &chunkWriter{w: st}
	bw := bufio.NewWriterSize(cw, 256<<10)
	err := produce(bw)
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	if cw.err != nil {
		return
	}
	var end [4]byte
	if _, werr := st.Write(end[:]); werr != nil {
		return
	}
	r := reply{}
	if err != nil {
		r.Error = err.Error()
	}
	writeFrame(st, r)
}

// Host side.

// MaxScanPath bounds one path in a scan answer (PATH_MAX).
const MaxScanPath = 4096

// ScanWorkspace asks the guest what changed in the workspace at dir since
// it was shipped (see ManifestFile). At most limit change records are
// accepted (and a few more rule files); a guest that sends more, or
// malformed records, gets an error. giveUp is the guest's reason for not
// answering (X record): the caller falls back to git in the guest.
// A guest without a manifest answers with a *RemoteError.
func (c *Client) ScanWorkspace(ctx context.Context, dir string, limit int) (recs []ScanRecord, giveUp string, err error) {
	maxBytes := int64(limit+1024) * (MaxScanPath + 64)
	var buf bytes.Buffer
	if err := c.stream(ctx, request{Op: opWsScan, Path: dir, Limit: limit}, &buf, maxBytes); err != nil {
		return nil, "", err
	}
	return ParseScan(buf.Bytes(), limit)
}

// ParseScan parses ScanDir's output: at most limit change records and 1024
// rule records; malformed records are an error matching ErrProtocol.
func ParseScan(b []byte, limit int) (recs []ScanRecord, giveUp string, err error) {
	rules := 0
	for len(b) > 0 {
		nul := bytes.IndexByte(b, 0)
		if nul < 0 {
			return nil, "", fmt.Errorf("agent ws-scan: %w: truncated record", ErrProtocol)
		}
		rec := string(b[:nul])
		b = b[nul+1:]
		f := strings.SplitN(rec, " ", 4)
		if len(f) != 4 || len(f[0]) != 1 {
			return nil, "", fmt.Errorf("agent ws-scan: %w: bad record %q", ErrProtocol, bounded(rec, 200))
		}
		r := ScanRecord{Kind: f[0][0], Path: f[3]}
		if r.Kind == ScanGiveUp {
			return nil, bounded(r.Path, 512), nil
		}
		mode, err1 := strconv.ParseUint(f[1], 8, 32)
		size, err2 := strconv.ParseInt(f[2], 10, 64)
		if err1 != nil || err2 != nil || size < 0 || len(r.Path) > MaxScanPath {
			return nil, "", fmt.Errorf("agent ws-scan: %w: bad record %q", ErrProtocol, bounded(rec, 200))
		}
		r.Mode, r.Size = uint32(mode), size
		switch r.Kind {
		case ScanNew, ScanModified, ScanDeleted:
		case ScanRules:
			if rules++; rules > 1024 {
				return nil, "more than 1024 .gitignore and .gitattributes files", nil
			}
		default:
			return nil, "", fmt.Errorf("agent ws-scan: %w: bad record %q", ErrProtocol, bounded(rec, 200))
		}
		recs = append(recs, r)
		if len(recs)-rules > limit {
			return nil, "", fmt.Errorf("agent ws-scan: %w: more than %d records", ErrProtocol, limit)
		}
	}
	return recs, "", nil
}

// FetchFiles writes to w a tar of the regular files and symlinks among
// paths (relative to dir) in the guest: at most limit bytes of tar, then an
// error wrapping ErrLimitExceeded. The tar is the guest's: check every
// entry.
func (c *Client) FetchFiles(ctx context.Context, dir string, paths []string, w io.Writer, limit int64) error {
	return c.stream(ctx, request{Op: opGetFiles, Path: dir, Paths: paths}, w, limit)
}

// stream sends req and copies the chunks of the answer to w (at most limit
// bytes), then reads the result frame.
func (c *Client) stream(ctx context.Context, req request, w io.Writer, limit int64) error {
	st, err := c.open(ctx, req)
	if err != nil {
		return err
	}
	defer st.Close()
	stop := watchCtx(ctx, st)
	defer stop()
	var rep reply
	if err := readFrame(st, maxReplyFrame, &rep); err != nil {
		return c.opErr(ctx, req.Op, err)
	}
	if rep.Error != "" {
		return &RemoteError{Op: req.Op, Message: bounded(rep.Error, 4096)}
	}
	var total int64
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(st, hdr[:]); err != nil {
			return c.opErr(ctx, req.Op, err)
		}
		n := int64(binary.BigEndian.Uint32(hdr[:]))
		if n == 0 {
			break
		}
		if n > maxChunk {
			return fmt.Errorf("agent %s: %w: chunk of %d bytes", req.Op, ErrFrameTooLarge, n)
		}
		if limit > 0 && total+n > limit {
			return fmt.Errorf("agent %s: %w (%d bytes)", req.Op, ErrLimitExceeded, limit)
		}
		if _, err := io.CopyN(w, st, n); err != nil {
			return c.opErr(ctx, req.Op, err)
		}
		total += n
	}
	if err := readFrame(st, maxReplyFrame, &rep); err != nil {
		return c.opErr(ctx, req.Op, err)
	}
	if rep.Error != "" {
		return &RemoteError{Op: req.Op, Message: bounded(rep.Error, 4096)}
	}
	return nil
}
