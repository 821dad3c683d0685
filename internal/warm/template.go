// Templates: VMs booted cold to a ready agent, then snapshotted
// (vmm.Snapshotter), from which clones start in a fraction of a cold boot.
//
// A template is keyed by everything its snapshot depends on (Shape.Key):
// the image digest, the agent digest, the backend and its VMM identity
// (program version and build, accelerator), the machine shape (vCPUs,
// memory) and the device set (root disk size, a spare work-disk slot,
// NIC slots) plus the kernel arguments. Any change gives another key, so
// a template is never restored into something it was not made for; the
// old ones are removed by RemoveStale / Prune.
//
// Files, in TemplatesDir/<key>/ (paths.Layout.TemplateDir):
//
//	root.*       the template's root disk, made from the image's base by
//	             the disk strategy (disk.Choose for the backend; the
//	             extension is the format's, disk.Ext), frozen after the
//	             snapshot. Each clone's root is made from it by the same
//	             strategy (CloneRoot); it is never booted or written again.
//	work.img     the spare work-disk slot (/dev/vdb), an empty sparse raw
//	             file, when Shape.WorkDiskBytes > 0. A clone is given its
//	             own image of exactly that size in the same slot.
//	ram, state, qemu.json
//	             the backend's snapshot (vmm.Snapshot{Dir: the template
//	             dir}); QEMU's clones map ram copy-on-write.
//	meta.json    Meta: the shape and every other file's size and sha256.
//
// Rules: a template directory appears complete (built in a temporary
// directory, fsynced, renamed) or not at all; its files are never written
// after that (the tests check their digests around clones). Lookup is
// cheap (meta + file sizes) and a template that fails it — missing,
// truncated, another format — is reported absent, never an error: the
// caller boots cold. Verify checks the digests.
//
// A clone's root disk may depend on its template's root for as long as
// the clone's disk exists (running or stopped: an overlay does). Prune
// and RemoveStale take an inUse predicate for that, and disk.Detach makes
// a stopped clone's root independent so its template can go.

package warm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/agentbin"
	"github.com/banger-sh/banger/internal/crashpoint"
	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/vmm"
)

// FormatVersion is the version of the template layout and of Shape's
// meaning; it is part of every key. 2: the root filesystem is grown to
// RootBytes in the template (clones need no resize2fs). 3: file digests
// cover data extents only (see digestFile).
const FormatVersion = 3

// File names inside a template directory.
const (
	FileMeta = "meta.json"
	// FileRootStem is the root disk's name without its extension
	// (disk.Ext of its format).
	FileRootStem = "root"
	FileWork     = "work.img"
)

// rootImage finds the root disk of the template in dir; meta.json must
// list it.
func rootImage(dir string, files map[string]FileInfo) (disk.Image, bool) {
	img, ok := disk.Existing(filepath.Join(dir, FileRootStem))
	if !ok {
		return disk.Image{}, false
	}
	_, listed := files[filepath.Base(img.Path)]
	return img, listed
}

// Shape is everything a template is made from. Two VMs with equal keys
// can be clones of one template.
type Shape struct {
	// ImageName is for listings and stale removal; not part of the key.
	ImageName   string `json:"image_name"`
	ImageDigest string `json:"image_digest"`
	AgentDigest string `json:"agent_digest"`
	Backend     string `json:"backend"`
	// VMM is the backend's vmm.Snapshotter.SnapshotIdentity.
	VMM       string `json:"vmm"`
	VCPUs     int    `json:"vcpus"`
	MemoryMiB int    `json:"memory_mib"`
	// RootBytes is the root disk's virtual size (0: the image base's).
	RootBytes int64 `json:"root_bytes"`
	// WorkDiskBytes is the size of the spare work-disk slot, /dev/vdb
	// (0: no slot).
	WorkDiskBytes int64 `json:"work_disk_bytes"`
	// NICs is the number of NIC slots (clones bring their own taps).
	NICs       int      `json:"nics"`
	KernelArgs []string `json:"kernel_args,omitempty"`
}

// Key is the template's identity: the sha256 (first 32 hex digits) of
// the shape without its image name, plus FormatVersion.
func (s Shape) Key() string {
	k := s
	k.ImageName = ""
	b, _ := json.Marshal(struct {
		Format int   `json:"format"`
		Shape  Shape `json:"shape"`
	}{FormatVersion, k})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

func (s Shape) validate() error {
	switch {
	case s.ImageDigest == "" || s.AgentDigest == "" || s.Backend == "" || s.VMM == "":
		return fmt.Errorf("template shape: image digest, agent digest, backend and VMM identity are required: %w", errdefs.ErrInvalidArgument)
	case s.VCPUs < 1 || s.MemoryMiB < 64 || s.RootBytes < 0 || s.WorkDiskBytes < 0 || s.NICs < 0 || s.NICs > 8:
		return fmt.Errorf("template shape %+v: out of range: %w", s, errdefs.ErrInvalidArgument)
	}
	return nil
}

// FileInfo is one template file's size and digest.
type FileInfo struct {
	Size int64 `json:"size"`
	// SHA256 is digestFile's: over the data extents, not the holes.
	SHA256 string `json:"sha256"`
}

// Meta is meta.json.
type Meta struct {
	Format       int                 `json:"format"`
	Key          string              `json:"key"`
	Shape        Shape               `json:"shape"`
	Created      time.Time           `json:"created"`
	BuildSeconds float64             `json:"build_seconds"`
	Files        map[string]FileInfo `json:"files"`
}

// Template is a complete template on disk.
type Template struct {
	Meta
	Dir  string
	root disk.Image
	disk disk.Strategy // makes clones' roots; nil: none can be made
	derr error         // why not
}

// Snapshot is what a clone's vmm.Spec.Restore must be.
func (t *Template) Snapshot() *vmm.Snapshot { return &vmm.Snapshot{Dir: t.Dir} }

// RootDisk is the frozen root disk that clones' roots are made from.
func (t *Template) RootDisk() string { return t.root.Path }

// CloneRoot creates a clone's root disk at stem + the format's extension
// (disk.Ext) from the template's frozen root, with the store's disk
// strategy (same virtual size, as the guest expects), and returns it.
func (t *Template) CloneRoot(ctx context.Context, stem string) (vmm.Disk, error) {
	if t.disk == nil {
		return vmm.Disk{}, t.derr
	}
	img, err := disk.Make(ctx, t.disk, t.root, stem, 0)
	if err != nil {
		return vmm.Disk{}, fmt.Errorf("clone root of template %s: %w", t.Key[:12], err)
	}
	return vmm.Disk{Path: img.Path, Format: img.Format}, nil
}

// Bytes is the disk space the template uses (allocated blocks: the RAM
// file and the work slot are sparse).
func (t *Template) Bytes() int64 {
	var n int64
	for name := range t.Files {
		n += allocated(filepath.Join(t.Dir, name))
	}
	return n + allocated(filepath.Join(t.Dir, FileMeta))
}

// Store is the set of templates under one directory. Its methods are safe
// for concurrent use; Build runs at most once per key at a time.
type Store struct {
	layout  paths.Layout
	backend vmm.Backend
	log     *slog.Logger
	opts    StoreOptions
	disk    disk.Strategy // makes templates' and clones' roots
	diskErr error

	mu       sync.Mutex
	building map[string]*build // by key
	temps    map[string]bool   // temporary dirs of builds in progress
}

type build struct {
	done chan struct{}
	t    *Template
	err  error
}

// StoreOptions tune a Store.
type StoreOptions struct {
	// ReadyTimeout bounds the template's cold boot (default 120 s).
	ReadyTimeout time.Duration
	// Settle is how long Build waits between closing its agent
	// connection and snapshotting, so that the guest agent is back to
	// waiting for a host (default 500 ms). A clone of a template
	// snapshotted mid-session loses its host's first handshake attempt
	// (about 200 ms).
	Settle time.Duration
	// InUse reports whether a clone's disk depends on the template with
	// this key. Build then never replaces a broken template directory
	// with that key, and Prune never removes it (a stopped clone's root
	// disk may be backed by the template's root).
	InUse  func(key string) bool
	Logger *slog.Logger
	// Disk makes root disks; nil: disk.Choose for the backend's root
	// formats and the templates directory.
	Disk disk.Strategy
}

// NewStore returns the store in layout.TemplatesDir(); b must implement
// vmm.Snapshotter for Build (Lookup and the rest work with any backend).
func NewStore(layout paths.Layout, b vmm.Backend, opts StoreOptions) *Store {
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 120 * time.Second
	}
	if opts.Settle == 0 {
		opts.Settle = 500 * time.Millisecond
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{layout: layout, backend: b, log: log, opts: opts, building: map[string]*build{}, temps: map[string]bool{}, disk: opts.Disk}
	if s.disk == nil {
		s.disk, s.diskErr = disk.Choose(b.RootFormats(), layout.TemplatesDir(), disk.RealHost())
	}
	return s
}

// Supported reports whether the backend can make templates.
func (s *Store) Supported() bool {
	_, ok := s.backend.(vmm.Snapshotter)
	return ok
}

// Complete fills the parts of sh that this host decides: Backend, VMM
// (the backend's snapshot identity) and, when empty, AgentDigest (the
// embedded agent's, agentbin.Digest). Callers complete a shape, then
// Lookup(sh.Key()).
func (s *Store) Complete(ctx context.Context, sh Shape) (Shape, error) {
	sn, ok := s.backend.(vmm.Snapshotter)
	if !ok {
		return sh, fmt.Errorf("backend %s: warm starts: %w", s.backend.Name(), vmm.ErrUnsupported)
	}
	id, err := sn.SnapshotIdentity(ctx)
	if err != nil {
		return sh, fmt.Errorf("template: %w", err)
	}
	sh.Backend, sh.VMM = s.backend.Name(), id
	if sh.AgentDigest == "" {
		sh.AgentDigest = agentbin.Digest()
	}
	return sh, nil
}

// Building returns a channel closed when the build of key in progress
// ends, or nil when none is.
func (s *Store) Building(key string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.building[key]; ok {
		return b.done
	}
	return nil
}

// Lookup returns the template with key when it is complete: meta.json
// reads, names this key and format, and every file it lists exists with
// its recorded size. Anything else is "no template" (boot cold).
func (s *Store) Lookup(key string) (*Template, bool) {
	t, err := s.load(key)
	if err != nil {
		return nil, false
	}
	return t, true
}

func (s *Store) load(key string) (*Template, error) {
	if !validKey(key) {
		return nil, fmt.Errorf("template key %q: %w", key, errdefs.ErrInvalidArgument)
	}
	dir := s.layout.TemplateDir(key)
	b, err := os.ReadFile(filepath.Join(dir, FileMeta))
	if err != nil {
		return nil, err
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("template %s: %s: %w", key, FileMeta, err)
	}
	if m.Format != FormatVersion || m.Key != key || m.Shape.Key() != key || len(m.Files) == 0 {
		return nil, fmt.Errorf("template %s: meta names format %d key %s", key, m.Format, m.Key)
	}
	root, ok := rootImage(dir, m.Files)
	if !ok {
		return nil, fmt.Errorf("template %s: no root disk", key)
	}
	for name, fi := range m.Files {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("template %s: %w", key, err)
		}
		if st.Size() != fi.Size {
			return nil, fmt.Errorf("template %s: %s is %d bytes, recorded %d", key, name, st.Size(), fi.Size)
		}
	}
	return &Template{Meta: m, Dir: dir, root: root, disk: s.disk, derr: s.diskErr}, nil
}

func validKey(k string) bool {
	if len(k) != 32 {
		return false
	}
	_, err := hex.DecodeString(k)
	return err == nil && strings.ToLower(k) == k
}

// Verify recomputes every file's digest (reads all of it: about a second
// for a 256 MiB template).
func (t *Template) Verify() error {
	for name, fi := range t.Files {
		size, sum, err := digestFile(filepath.Join(t.Dir, name))
		if err != nil {
			return fmt.Errorf("template %s: %w", t.Key, err)
		}
		if size != fi.Size || sum != fi.SHA256 {
			return fmt.Errorf("template %s: %s changed (%d bytes, sha256 %s; recorded %d, %s)", t.Key, name, size, sum[:12], fi.Size, fi.SHA256[:12])
		}
	}
	return nil
}

// Source is what a template boots from: the image's files.
type Source struct {
	Kernel         string
	Initrd         string
	RootBase       string
	RootBaseFormat string // disk.FormatRaw (default) or another disk.Format*
}

// Build makes the template for sh (completed with Complete) unless it
// exists, and returns it. It boots a VM cold from src with sh's shape
// (no taps: NIC slots only; an empty work-disk slot), waits for its
// agent, removes any sshd host keys from it (clones make their own),
// closes the agent connection, snapshots it and commits the directory
// atomically. The template VM never outlives Build. Concurrent Builds of
// one key share one build.
func (s *Store) Build(ctx context.Context, sh Shape, src Source) (*Template, error) {
	if err := sh.validate(); err != nil {
		return nil, err
	}
	key := sh.Key()
	if t, ok := s.Lookup(key); ok {
		return t, nil
	}
	s.mu.Lock()
	if b, ok := s.building[key]; ok {
		s.mu.Unlock()
		select {
		case <-b.done:
			return b.t, b.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	b := &build{done: make(chan struct{})}
	s.building[key] = b
	s.mu.Unlock()
	b.t, b.err = s.build(ctx, sh, key, src)
	s.mu.Lock()
	delete(s.building, key)
	s.mu.Unlock()
	close(b.done)
	return b.t, b.err
}

func (s *Store) build(ctx context.Context, sh Shape, key string, src Source) (_ *Template, err error) {
	sn, ok := s.backend.(vmm.Snapshotter)
	if !ok {
		return nil, fmt.Errorf("backend %s: warm starts: %w", s.backend.Name(), vmm.ErrUnsupported)
	}
	if sh.Backend != s.backend.Name() {
		return nil, fmt.Errorf("template for backend %s built by %s: %w", sh.Backend, s.backend.Name(), errdefs.ErrInvalidArgument)
	}
	if id, err := sn.SnapshotIdentity(ctx); err != nil {
		return nil, err
	} else if id != sh.VMM {
		return nil, fmt.Errorf("template for VMM %q, this backend is %q: %w", sh.VMM, id, errdefs.ErrInvalidArgument)
	}
	started := time.Now()
	if err := os.MkdirAll(s.layout.TemplatesDir(), 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(s.layout.TemplatesDir(), ".tmp-"+key[:8]+"-")
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.temps[tmp] = true
	s.mu.Unlock()
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
			err = fmt.Errorf("build template %s (%s): %w", key[:12], sh.ImageName, err)
		}
		s.mu.Lock()
		delete(s.temps, tmp)
		s.mu.Unlock()
	}()
	id := "tpl-" + randHex(4)
	rt := s.layout.TemplateRuntimeDir(id)
	if err := os.MkdirAll(rt, 0o700); err != nil {
		return nil, err
	}
	defer os.RemoveAll(rt)

	format := src.RootBaseFormat
	if format == "" {
		format = disk.FormatRaw
	}
	if s.disk == nil {
		return nil, s.diskErr
	}
	root, err := disk.Make(ctx, s.disk, disk.Image{Path: src.RootBase, Format: format}, filepath.Join(tmp, FileRootStem), sh.RootBytes)
	if err != nil {
		return nil, err
	}
	crashpoint.Hit("template.disk")
	spec := vmm.Spec{
		ID: id, VCPUs: sh.VCPUs, MemoryMiB: sh.MemoryMiB,
		Kernel: src.Kernel, Initrd: src.Initrd, KernelArgs: sh.KernelArgs,
		Root:        vmm.Disk{Path: root.Path, Format: root.Format},
		RuntimeDir:  rt,
		ConsoleLog:  filepath.Join(tmp, "console.log"),
		VMMLog:      filepath.Join(tmp, "vmm.log"),
		SnapshotDir: tmp,
	}
	if sh.WorkDiskBytes > 0 {
		work := filepath.Join(tmp, FileWork)
		if err := disk.Sparse(work, sh.WorkDiskBytes); err != nil {
			return nil, err
		}
		spec.Disks = []vmm.Disk{{Path: work, Format: disk.FormatRaw}}
	}
	for i := 0; i < sh.NICs; i++ {
		spec.NICs = append(spec.NICs, vmm.NIC{MAC: fmt.Sprintf("02:ba:00:00:00:%02x", i+1)})
	}
	h, err := s.backend.Start(ctx, spec)
	if err != nil {
		return nil, err
	}
	crashpoint.Hit("template.vmm")
	snapshotted := false
	defer func() {
		if !snapshotted {
			kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if kerr := s.backend.Kill(kctx, h); kerr != nil {
				s.log.Warn("template build: kill", "key", key, "err", kerr)
			}
		}
	}()
	if err := s.prepareGuest(ctx, h); err != nil {
		return nil, fmt.Errorf("%w; console: %s", err, tail(spec.ConsoleLog))
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(s.opts.Settle):
	}
	snapshotted = true // Snapshot ends the process whatever happens
	if err := sn.Snapshot(ctx, h, tmp); err != nil {
		return nil, err
	}
	crashpoint.Hit("template.snapshot")
	for _, log := range []string{spec.ConsoleLog, spec.VMMLog} {
		os.Remove(log)
	}
	return s.commit(tmp, key, sh, time.Since(started))
}

// prepareGuest waits for the template's agent, removes sshd host keys
// and closes the connection.
func (s *Store) prepareGuest(ctx context.Context, h vmm.Handle) error {
	rctx, cancel := context.WithTimeout(ctx, s.opts.ReadyTimeout)
	defer cancel()
	var last error
	for {
		if s.backend.Status(rctx, h) == vmm.StateExited {
			return fmt.Errorf("template VM exited during boot (last: %v)", last)
		}
		c, err := dialAgent(rctx, s.backend, h)
		if err == nil {
			defer c.Close()
			if err := removeHostKeys(rctx, c); err != nil {
				return err
			}
			return rehearse(rctx, c)
		}
		last = err
		select {
		case <-rctx.Done():
			return fmt.Errorf("template agent not ready: %w (last: %v)", rctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func dialAgent(ctx context.Context, b vmm.Backend, h vmm.Handle) (*agent.Client, error) {
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := b.DialAgent(actx, h)
	if err != nil {
		return nil, err
	}
	c, err := agent.Dial(actx, conn)
	if err != nil {
		return nil, err
	}
	if _, err := c.Ping(actx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// rehearse applies a throw-away identity to the template, as a clone's
// will be: the guest's caches (the /etc directory and files) are then
// warm in every clone, which makes a clone's Configure cheaper (measured:
// hostname 70 -> 35 ms, machine-id 19 -> 3 ms under TCG). The network is
// left alone: the template's NIC stays down, so a clone sends nothing
// with the template's MAC before it is configured.
func rehearse(ctx context.Context, c *agent.Client) error {
	id, err := Identity("banger-template", nil, nil)
	if err != nil {
		return err
	}
	return c.Configure(ctx, id)
}

// removeHostKeys deletes any sshd host keys (an image should carry none;
// a clone must never share them), grows the root filesystem to the
// template's root disk (so that clones do not each run resize2fs, whose
// guest CPU under TCG would compete with the clone's first command) and
// syncs.
func removeHostKeys(ctx context.Context, c *agent.Client) error {
	p, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"/bin/sh", "-c", "rm -f /etc/ssh/ssh_host_*; resize2fs /dev/vda >/dev/null 2>&1; sync"}})
	if errors.Is(err, agent.ErrCommandNotFound) {
		return nil // no shell, so no sshd either
	}
	if err != nil {
		return err
	}
	st, err := p.Wait()
	if err != nil {
		return err
	}
	if st.Code != 0 {
		return fmt.Errorf("remove sshd host keys: exit %d", st.Code)
	}
	return nil
}

// commit records the files' digests and renames tmp into place.
func (s *Store) commit(tmp, key string, sh Shape, took time.Duration) (*Template, error) {
	m := Meta{Format: FormatVersion, Key: key, Shape: sh, Created: time.Now().UTC(), BuildSeconds: took.Seconds(), Files: map[string]FileInfo{}}
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			return nil, fmt.Errorf("unexpected %s in a template", e.Name())
		}
		p := filepath.Join(tmp, e.Name())
		size, sum, err := digestFile(p)
		if err != nil {
			return nil, err
		}
		m.Files[e.Name()] = FileInfo{Size: size, SHA256: sum}
		if err := syncPath(p); err != nil {
			return nil, err
		}
		// A guard against stray writes by non-root processes (clones
		// open the root only as a backing file). The backend's files
		// keep their modes: QEMU opens the RAM file read-write even to
		// map it privately.
		if strings.HasPrefix(e.Name(), FileRootStem+".") || e.Name() == FileWork {
			if err := os.Chmod(p, 0o444); err != nil {
				return nil, err
			}
		}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeFileSync(filepath.Join(tmp, FileMeta), append(b, '\n')); err != nil {
		return nil, err
	}
	if err := syncPath(tmp); err != nil {
		return nil, err
	}
	dest := s.layout.TemplateDir(key)
	crashpoint.Hit("template.commit")
	if err := os.Rename(tmp, dest); err != nil {
		if t, ok := s.Lookup(key); ok {
			os.RemoveAll(tmp) // another build won
			return t, nil
		}
		// A broken template with this key (files deleted or
		// truncated): replace it unless a clone depends on it.
		if s.inUse(key) {
			return nil, fmt.Errorf("template %s is broken and in use by a clone's disk: %w", key[:12], errdefs.ErrConflict)
		}
		if rerr := s.Remove(key); rerr != nil {
			return nil, errors.Join(err, rerr)
		}
		if err := os.Rename(tmp, dest); err != nil {
			return nil, err
		}
	}
	if err := syncPath(s.layout.TemplatesDir()); err != nil {
		return nil, err
	}
	s.log.Info("template built", "key", key, "image", sh.ImageName, "vcpus", sh.VCPUs, "mem", sh.MemoryMiB, "took", took.Round(time.Millisecond))
	return s.load(key)
}

func (s *Store) inUse(key string) bool {
	return s.opts.InUse != nil && s.opts.InUse(key)
}

// List returns the complete templates, oldest first. Directories that
// fail Lookup are skipped (Prune removes them).
func (s *Store) List() ([]*Template, error) {
	ents, err := os.ReadDir(s.layout.TemplatesDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*Template
	for _, e := range ents {
		if t, ok := s.Lookup(e.Name()); ok {
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// Remove deletes the template with key (no error if absent). Its
// directory disappears at once (renamed away, then removed).
func (s *Store) Remove(key string) error {
	if !validKey(key) {
		return fmt.Errorf("template key %q: %w", key, errdefs.ErrInvalidArgument)
	}
	dir := s.layout.TemplateDir(key)
	gone := filepath.Join(s.layout.TemplatesDir(), ".del-"+key[:8]+"-"+randHex(4))
	if err := os.Rename(dir, gone); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	return os.RemoveAll(gone)
}

// Prune removes every template for which keep returns false, every
// directory that is not a complete template, and leftovers of builds
// that are not running in this process; never a template that
// StoreOptions.InUse reports in use. It returns what it removed.
func (s *Store) Prune(keep func(*Template) bool) ([]*Template, error) {
	ents, err := os.ReadDir(s.layout.TemplatesDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []*Template
	var errs []error
	for _, e := range ents {
		p := filepath.Join(s.layout.TemplatesDir(), e.Name())
		if strings.HasPrefix(e.Name(), ".") {
			s.mu.Lock()
			active := s.temps[p]
			s.mu.Unlock()
			if !active {
				errs = append(errs, os.RemoveAll(p))
			}
			continue
		}
		if s.inUse(e.Name()) {
			continue
		}
		t, ok := s.Lookup(e.Name())
		switch {
		case !ok:
			errs = append(errs, os.RemoveAll(p))
		case !keep(t):
			if err := s.Remove(t.Key); err != nil {
				errs = append(errs, err)
				continue
			}
			removed = append(removed, t)
		}
	}
	return removed, errors.Join(errs...)
}

// RemoveStale removes the templates that can never be used again: made
// for another backend, VMM or agent than cur (completed by Complete), or
// from an image whose current digest (imageDigest by name; false: the
// image is gone) differs. Templates for which inUse(key) is true (a
// clone's disk still depends on them) are kept.
func (s *Store) RemoveStale(cur Shape, imageDigest func(name string) (string, bool), inUse func(key string) bool) ([]*Template, error) {
	return s.Prune(func(t *Template) bool {
		if inUse != nil && inUse(t.Key) {
			return true
		}
		sh := t.Shape
		if sh.Backend != cur.Backend || sh.VMM != cur.VMM || sh.AgentDigest != cur.AgentDigest {
			return false
		}
		d, ok := imageDigest(sh.ImageName)
		return ok && d == sh.ImageDigest
	})
}

// Identity is the per-clone identity a restored VM must receive through
// agent.Client.Configure right after restore, before it counts as ready:
// a fresh 32-byte RNG seed (crypto/rand), the host's clock, hostname, a
// fresh machine-id, and network (with the clone's own MAC set in
// network.MAC, since the NIC's MAC comes from the snapshot). Call it just
// before Configure (it stamps the time).
func Identity(hostname string, network *agent.NetConfig, authorizedKeys []string) (agent.GuestConfig, error) {
	seed := make([]byte, 32)
	if _, err := rand.Read(seed); err != nil {
		return agent.GuestConfig{}, err
	}
	mid := make([]byte, 16)
	if _, err := rand.Read(mid); err != nil {
		return agent.GuestConfig{}, err
	}
	return agent.GuestConfig{
		Hostname:       hostname,
		Time:           time.Now(),
		RandomSeed:     seed,
		MachineID:      hex.EncodeToString(mid),
		Network:        network,
		AuthorizedKeys: authorizedKeys,
	}, nil
}

// ConfigureClone connects to the agent of a clone that Start just
// restored and applies id (from Identity): the handshake and Configure
// are the readiness check, no separate ping is needed (the agent was
// running when the template was snapshotted). It returns the open
// session. ctx bounds the whole; a restored agent answers within a few
// hundred milliseconds, so a failure here means the restore is broken
// (kill the clone and boot cold).
func ConfigureClone(ctx context.Context, b vmm.Backend, h vmm.Handle, id agent.GuestConfig) (*agent.Client, error) {
	conn, err := b.DialAgent(ctx, h)
	if err != nil {
		return nil, err
	}
	c, err := agent.Dial(ctx, conn)
	if err != nil {
		return nil, err
	}
	if err := c.Configure(ctx, id); err != nil {
		c.Close()
		return nil, fmt.Errorf("configure clone identity: %w", err)
	}
	return c, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// digestFile returns a file's size and the SHA-256 of its data extents:
// for each, its offset and length (8 bytes each, big endian), then its
// bytes. Holes are not hashed: a template's work-disk slot is 4 GiB of
// hole and its RAM file mostly hole, and hashing their zeros cost ~12 s
// of CPU per template build here. A write anywhere allocates an extent
// (or changes one), so the digest still proves a file unwritten.
func digestFile(path string) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, "", err
	}
	size := st.Size()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	err = disk.DataExtents(f, size, func(off, end int64) error {
		var hdr [16]byte
		binary.BigEndian.PutUint64(hdr[:8], uint64(off))
		binary.BigEndian.PutUint64(hdr[8:], uint64(end-off))
		h.Write(hdr[:])
		_, err := io.CopyBuffer(h, io.NewSectionReader(f, off, end-off), buf)
		return err
	})
	if err != nil {
		return 0, "", err
	}
	return size, hex.EncodeToString(h.Sum(nil)), nil
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o444)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return "(empty)"
	}
	if len(b) > 1500 {
		b = b[len(b)-1500:]
	}
	return string(b)
}
