package vm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/workspace"
)

// The guest sees the work disk as the first disk after the root: /dev/vdb.
const workDevice = "/dev/vdb"

// workMountOptions: a work disk is made with lazy_itable_init (mkfs does
// not write its inode tables); without noinit_itable the guest's kernel
// would zero them after the mount, ~64 MiB of writes under emulation
// competing with the run's command, for nothing a scratch disk needs.
const workMountOptions = "noinit_itable"

func workspacePath(p string) (string, error) {
	if p == "" {
		return workspace.DefaultPath, nil
	}
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" || strings.ContainsAny(p, "\n\x00") {
		return "", errdefs.InvalidArgument(fmt.Sprintf("workspace path %q: want an absolute, clean path other than /", p))
	}
	return p, nil
}

// adoptWorkDisk copies a client-built work disk (the descriptor it
// uploaded: only its data extents, copy_file_range) into the VM's
// directory.
//
// intoSlot copies it into the work-disk slot a spare clone holds open
// (same size, checked by spareFits).
//
// The shadow repository (the base's objects, for exports built with host
// git) is made in the background (startShadow): only an export that finds
// changes waits for it.
func (m *Manager) adoptWorkDisk(ctx context.Context, id string, ws *api.WorkspaceSpec, intoSlot bool) (*api.WorkspaceInfo, error) {
	p, err := workspacePath(ws.Path)
	if err != nil {
		return nil, err
	}
	if ws.Disk == nil {
		return nil, errdefs.InvalidArgument("workspace: no work disk")
	}
	st, err := ws.Disk.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return nil, errdefs.InvalidArgument("work disk: not a regular file")
	}
	dest := m.layout.VMWorkDisk(id)
	t0 := time.Now()
	if err := copyDisk(ws.Disk, st.Size(), dest, !intoSlot); err != nil {
		if !intoSlot {
			os.Remove(dest)
		}
		if errors.Is(err, syscall.ENOSPC) {
			return nil, fmt.Errorf("take over work disk: %s is full: %w", filepath.Dir(dest), err)
		}
		return nil, fmt.Errorf("take over work disk: %w", err)
	}
	info := &api.WorkspaceInfo{Path: p, Repo: ws.Repo, Base: ws.Base, Disk: true}
	m.log.Debug("work disk adopted", "id", id, "into_slot", intoSlot, "took", time.Since(t0))
	if ws.PackFile != nil {
		if err := m.startShadow(id, ws.PackFile, ws.ObjectFormat, ws.Base.Commit); err != nil {
			return nil, err
		}
		info.HostExport, info.ObjectFormat = true, ws.ObjectFormat
	}
	return info, nil
}

// A shadow job makes a VM's shadow repository in the background: git
// index-pack hashes every object of the shipped tree (~1.5 s for the Go
// tree here), which a create used to wait for although only an export
// that finds changes needs it. The VM's directory holds shadow.pending
// until it is complete: after a daemon restart, a shadow repository with
// that file beside it is incomplete, and exports fall back to git in the
// guest.
type shadowJob struct {
	done   chan struct{}
	err    error
	cancel context.CancelFunc
}

func (m *Manager) shadowPending(id string) string {
	return filepath.Join(m.layout.VMDir(id), "shadow.pending")
}

// startShadow starts the shadow job of VM id, which reads the uploaded
// pack through a descriptor of its own (the request closes its one).
func (m *Manager) startShadow(id string, packFile *os.File, format, base string) error {
	fd, err := unix.Dup(int(packFile.Fd()))
	if err != nil {
		return err
	}
	pack := os.NewFile(uintptr(fd), "pack")
	if err := os.WriteFile(m.shadowPending(id), nil, 0o644); err != nil {
		pack.Close()
		return err
	}
	ctx, cancel := context.WithCancel(m.bgCtx)
	j := &shadowJob{done: make(chan struct{}), cancel: cancel}
	m.mu.Lock()
	m.shadows[id] = j
	m.wg.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		defer cancel()
		t0 := time.Now()
		err := workspace.ShadowInit(ctx, m.shadowDir(id), pack, format, base)
		pack.Close()
		if err != nil {
			// A pack that does not index is the client's fault; the
			// exports of this VM use git in the guest.
			os.RemoveAll(m.shadowDir(id))
			if ctx.Err() != nil {
				m.log.Debug("shadow repository: stopped (the VM goes)", "id", id)
			} else {
				m.log.Warn("shadow repository not made: exports use git in the guest", "id", id, "err", err)
			}
		} else {
			os.Remove(m.shadowPending(id))
			m.log.Debug("shadow repository", "id", id, "took", time.Since(t0))
		}
		j.err = err
		close(j.done)
	}()
	return nil
}

// waitShadow waits for VM id's shadow repository (ctx bounds the wait).
func (m *Manager) waitShadow(ctx context.Context, id string) error {
	m.mu.Lock()
	j := m.shadows[id]
	m.mu.Unlock()
	if j != nil {
		select {
		case <-j.done:
			return j.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if _, err := os.Stat(m.shadowPending(id)); err == nil {
		return errors.New("its shadow repository was not completed (the daemon stopped meanwhile)")
	}
	if _, err := os.Stat(m.shadowDir(id)); err != nil {
		return errors.New("no shadow repository")
	}
	return nil
}

// dropShadow stops VM id's shadow job, if any, and waits for it (before
// its directory goes).
func (m *Manager) dropShadow(id string) {
	m.mu.Lock()
	j := m.shadows[id]
	delete(m.shadows, id)
	m.mu.Unlock()
	if j != nil {
		j.cancel()
		<-j.done
	}
}

// shadowDir is the bare repository holding a VM's workspace base objects.
func (m *Manager) shadowDir(id string) string { return filepath.Join(m.layout.VMDir(id), "shadow.git") }

// workDisks are the extra disks and guest mounts of a VM's workspace.
func (m *Manager) workDisks(r *record) ([]vmm.Disk, []agent.Mount) {
	ws := r.spec.Workspace
	if ws == nil || !ws.Disk {
		if r.spec.WorkSlot { // a clone keeps its template's empty slot
			return []vmm.Disk{{Path: m.layout.VMWorkDisk(r.row.ID), Format: "raw"}}, nil
		}
		return nil, nil
	}
	img := m.layout.VMWorkDisk(r.row.ID)
	return []vmm.Disk{{Path: img, Format: "raw"}},
		[]agent.Mount{{Device: workDevice, Path: ws.Path, Options: workMountOptions, Fresh: agent.NeverMounted(img)}}
}

// freeSlot reports whether r has an empty work-disk slot: one that no
// workspace was put in (a workspace prepared by tar lives in the root
// filesystem).
func (r *record) freeSlot() bool {
	return r.spec.WorkSlot && (r.spec.Workspace == nil || !r.spec.Workspace.Disk)
}

// ErrNoFreeSlot: the VM has no empty work-disk slot for a work disk (it
// was created before VMs had one, or its workspace is in it).
var ErrNoFreeSlot = errors.New("no empty work-disk slot")

// PrepareDisk attaches a client-built work disk (ws.Disk, the daemon's own
// copy of an upload, of the slot's size) to a running VM: it is copied into
// the VM's empty work-disk slot and the agent mounts it at ws.Path. The
// guest creates no file: the cost is the host's copy and one mount, where
// unpacking a tree under emulation costs minutes for a large one. The
// workspace is then the VM's as if it had been created with it (exports by
// host git with ws.PackFile, mounted again on every start).
func (m *Manager) PrepareDisk(ctx context.Context, name string, ws *api.WorkspaceSpec) (api.VM, error) {
	p, err := workspacePath(ws.Path)
	if err != nil {
		return api.VM{}, err
	}
	ws.Path = p
	r, unlock, err := m.acquire(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	if st := m.derive(ctx, r); st != StateRunning {
		return api.VM{}, errdefs.NotRunning(fmt.Sprintf("vm %s is %s, not running", r.row.Name, st))
	}
	if cur := r.spec.Workspace; cur != nil && cur.Disk {
		return api.VM{}, errdefs.Conflict(fmt.Sprintf("vm %s already has a workspace on its work disk at %s (one VM holds one: export it, and create another VM for another)", r.row.Name, cur.Path))
	}
	if !r.freeSlot() {
		return api.VM{}, errdefs.Conflict(fmt.Sprintf("vm %s: %v (created by an older banger): unpack instead (workspace prepare --unpack)", r.row.Name, ErrNoFreeSlot))
	}
	id := r.row.ID
	slot := m.layout.VMWorkDisk(id)
	sst, err := os.Stat(slot)
	if err != nil {
		return api.VM{}, fmt.Errorf("vm %s: work-disk slot: %w", r.row.Name, err)
	}
	if ws.Disk == nil {
		return api.VM{}, errdefs.InvalidArgument("workspace: no work disk")
	}
	if dst, err := ws.Disk.Stat(); err != nil || dst.Size() != sst.Size() {
		return api.VM{}, errdefs.InvalidArgument(fmt.Sprintf("work disk: want a disk of the slot's %d bytes", sst.Size()))
	}
	c, err := m.agent(ctx, r)
	if err != nil {
		return api.VM{}, err
	}
	// The guest may have written to its empty /dev/vdb: the copy writes
	// only the disk's data extents, so the slot is emptied first.
	if err := disk.Zero(slot); err != nil {
		return api.VM{}, fmt.Errorf("vm %s: empty the work-disk slot: %w", r.row.Name, err)
	}
	mounted := false
	info, err := m.adoptWorkDisk(ctx, id, ws, true)
	if err == nil {
		t0 := time.Now()
		err = c.Configure(ctx, agent.GuestConfig{Mounts: []agent.Mount{{Device: workDevice, Path: p, Options: workMountOptions, Exclusive: true, Fresh: agent.NeverMounted(slot)}}})
		m.log.Debug("work disk mounted", "vm", r.row.Name, "took", time.Since(t0))
		if err != nil {
			err = fmt.Errorf("vm %s: mount the work disk: %w", r.row.Name, err)
		}
		mounted = err == nil
	}
	if err == nil {
		prev := r.spec
		r.spec.Workspace, r.spec.WorkSlot = info, false
		if err = r.save(ctx, m.store); err != nil {
			r.spec = prev
		}
	}
	if err != nil {
		// Nothing of it stays: no shadow repository and, unless the guest
		// has it mounted, an empty slot again.
		m.dropShadow(id)
		os.RemoveAll(m.shadowDir(id))
		os.Remove(m.shadowPending(id))
		if !mounted {
			disk.Zero(slot)
		}
		return api.VM{}, err
	}
	m.log.Info("workspace attached", "vm", r.row.Name, "path", p, "host_export", info.HostExport)
	return m.toAPI(ctx, r), nil
}

// PrepareTar unpacks a workspace tar stream (workspace.TarStream, built by
// the client) into a running VM at path.
//
// base is called once the stream has been consumed (the client sends the
// base it learnt while producing the stream).
func (m *Manager) PrepareTar(ctx context.Context, name, p, repo string, base func() api.Base, tr io.Reader) (api.VM, error) {
	p, err := workspacePath(p)
	if err != nil {
		return api.VM{}, err
	}
	r, unlock, err := m.acquire(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	if st := m.derive(ctx, r); st != StateRunning {
		return api.VM{}, errdefs.NotRunning(fmt.Sprintf("vm %s is %s, not running", r.row.Name, st))
	}
	if ws := r.spec.Workspace; ws != nil && ws.Disk {
		// Its record would go, and with it the disk's mount on the next
		// start and any export of its edits.
		return api.VM{}, errdefs.Conflict(fmt.Sprintf("vm %s already has a workspace on its work disk at %s (one VM holds one: export it, and create another VM for another)", r.row.Name, ws.Path))
	}
	c, err := m.agent(ctx, r)
	if err != nil {
		return api.VM{}, err
	}
	// A fresh tree (files of an earlier prepare must not linger), then the
	// guest's own GNU tar: creating thousands of files under emulation is
	// the cost here, and tar does it with ~7x fewer context switches than
	// the agent's Go extraction (bench/workspace-vm). The stream comes from
	// the CLI (the user's own files), not from the guest.
	var errb strings.Builder
	unpack, err := c.Exec(ctx, agent.ExecRequest{
		Argv:   []string{"sh", "-c", `rm -rf -- "$1" && mkdir -p -- "$1" && exec tar -x --no-overwrite-dir -C "$1"`, "sh", p},
		Stdin:  tr,
		Stdout: io.Discard, Stderr: &limited{w: &errb, n: 8 << 10},
	})
	if err != nil {
		return api.VM{}, fmt.Errorf("vm %s: unpack workspace: %w", r.row.Name, err)
	}
	if st, err := unpack.Wait(); err != nil || st.Code != 0 {
		return api.VM{}, fmt.Errorf("vm %s: unpack workspace: tar exit %d %v: %s", r.row.Name, st.Code, err, strings.TrimSpace(errb.String()))
	}
	r.spec.Workspace = &api.WorkspaceInfo{Path: p, Repo: repo, Base: base()}
	if err := r.save(ctx, m.store); err != nil {
		return api.VM{}, err
	}
	return m.toAPI(ctx, r), nil
}

// ExportPatch runs the export in the guest and streams the (untrusted)
// patch to w, at most workspace.DefaultPatchLimit bytes. A stopped VM is
// started for the export and stopped again.
func (m *Manager) ExportPatch(ctx context.Context, name string, w io.Writer) error {
	r, err := m.get(ctx, name)
	if err != nil {
		return err
	}
	if r.spec.Workspace == nil {
		return errdefs.NotFound(fmt.Sprintf("vm %s has no workspace (create it with a repository, or 'banger workspace prepare')", r.row.Name))
	}
	if st := m.derive(ctx, r); st == StateStopped || st == StateError {
		if _, err := m.Start(ctx, name, nil); err != nil {
			return fmt.Errorf("start vm %s for the export: %w", r.row.Name, err)
		}
		defer m.Stop(context.WithoutCancel(ctx), name, StopOptions{})
	}
	_, err = m.exportTo(ctx, r, w)
	return err
}

// exportGuest is the guest side of a host export: the agent, bound to the
// workspace directory.
// It counts the time spent in the guest, for the export's log line.
type exportGuest struct {
	c            *agent.Client
	dir          string
	scan, fetch  time.Duration
	records, got int
}

func (g *exportGuest) Scan(ctx context.Context, limit int) ([]agent.ScanRecord, string, error) {
	t0 := time.Now()
	recs, giveUp, err := g.c.ScanWorkspace(ctx, g.dir, limit)
	g.scan += time.Since(t0)
	g.records += len(recs)
	return recs, giveUp, err
}

func (g *exportGuest) Fetch(ctx context.Context, paths []string, w io.Writer, limit int64) error {
	t0 := time.Now()
	err := g.c.FetchFiles(ctx, g.dir, paths, w, limit)
	g.fetch += time.Since(t0)
	g.got += len(paths)
	return err
}

// exportTo exports the workspace and returns the patch's sha256.
//
// A workspace shipped with its pack (WorkspaceInfo.HostExport) is exported
// by host git from the files the agent reports changed (HostExport: one
// walk in the guest, no git there). The guest's git (ExportCommand) is the
// fallback only: for VMs whose workspace came without a pack (prepared by
// an older client or daemon, unpacked by 'workspace prepare', a repository
// with submodules) and where HostExport cannot promise the same bytes
// (ErrFallback: conversion attributes, nested repositories, too many
// changes).
func (m *Manager) exportTo(ctx context.Context, r *record, w io.Writer) (string, error) {
	if r, _ = m.get(ctx, r.row.ID); r == nil {
		return "", errdefs.NotFound("vm gone")
	}
	c, err := m.agent(ctx, r)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	out := &capWriter{w: io.MultiWriter(w, h), n: workspace.DefaultPatchLimit}
	if ws := r.spec.Workspace; ws.HostExport {
		t0 := time.Now()
		g := &exportGuest{c: c, dir: ws.Path}
		err := workspace.HostExport(ctx, g, workspace.HostExportOptions{
			GitDir: m.shadowDir(r.row.ID), Base: ws.Base.Commit, ObjectFormat: ws.ObjectFormat, TmpDir: m.layout.VMDir(r.row.ID),
			Ready: func(ctx context.Context) error { return m.waitShadow(ctx, r.row.ID) },
		}, out)
		if err == nil {
			m.log.Debug("host export", "vm", r.row.Name, "took", time.Since(t0),
				"scan", g.scan, "records", g.records, "fetch", g.fetch, "fetched", g.got)
			return hex.EncodeToString(h.Sum(nil)), nil
		}
		if out.over {
			return "", errdefs.InvalidArgument(fmt.Sprintf("vm %s: export: the patch is larger than %d bytes", r.row.Name, int64(workspace.DefaultPatchLimit)))
		}
		if !errors.Is(err, workspace.ErrFallback) {
			return "", fmt.Errorf("vm %s: export: %w", r.row.Name, err)
		}
		// Nothing was written (HostExport writes the patch last, whole).
		m.log.Info("host export not possible: git in the guest", "vm", r.row.Name, "why", err)
	}
	var errb strings.Builder
	p, err := c.Exec(ctx, agent.ExecRequest{Argv: workspace.ExportCommand(r.spec.Workspace.Path), Stdout: out, Stderr: &limited{w: &errb, n: 8 << 10}})
	if err != nil {
		return "", fmt.Errorf("vm %s: export: %w", r.row.Name, err)
	}
	st, err := p.Wait()
	if err != nil {
		return "", fmt.Errorf("vm %s: export: %w", r.row.Name, err)
	}
	if out.over {
		return "", errdefs.InvalidArgument(fmt.Sprintf("vm %s: export: the patch is larger than %d bytes", r.row.Name, int64(workspace.DefaultPatchLimit)))
	}
	if st.Code != 0 {
		return "", fmt.Errorf("vm %s: export failed (exit %d): %s", r.row.Name, st.Code, strings.TrimSpace(errb.String()))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// MarkExported records that the patch with this digest was saved by the
// user, so deleting the VM no longer needs --force for those changes.
func (m *Manager) MarkExported(ctx context.Context, name, digest string) error {
	if b, err := hex.DecodeString(digest); err != nil || len(b) != sha256.Size || strings.ToLower(digest) != digest {
		return errdefs.InvalidArgument(fmt.Sprintf("exported: sha256 %q: want 64 lower-case hex digits", digest))
	}
	r, unlock, err := m.acquire(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	if r.spec.Workspace == nil {
		return errdefs.NotFound(fmt.Sprintf("vm %s has no workspace", r.row.Name))
	}
	r.spec.Workspace.Exported = digest
	return r.save(ctx, m.store)
}

// unexportedScanLimit bounds how much of a workspace patch the daemon (root)
// reads to tell whether a VM may be deleted: the patch is untrusted guest
// output, and this check only needs to know that there are edits. Past it,
// the VM has edits (unless the whole patch is the one last exported) that
// are not listed.
const unexportedScanLimit = 16 << 20

// unexported lists the files of a running VM's workspace changed since the
// last export (none: nothing changed, or nothing new), names quoted for
// people. The patch is validated (workspace.ScanPatch, which keeps none of
// its text) but not kept.
func (m *Manager) unexported(ctx context.Context, r *record) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	pr, pw := io.Pipe()
	type res struct {
		cs  []workspace.Change
		err error
	}
	ch := make(chan res, 1)
	go func() {
		cs, err := workspace.ScanPatch(pr, unexportedScanLimit)
		io.Copy(io.Discard, pr) // the digest covers the whole patch
		ch <- res{cs, err}
	}()
	digest, err := m.exportTo(ctx, r, pw)
	pw.CloseWithError(err)
	got := <-ch
	if err != nil {
		return nil, err
	}
	if digest == r.spec.Workspace.Exported {
		return nil, nil
	}
	if errors.Is(got.err, workspace.ErrTooLarge) {
		return []string{fmt.Sprintf("(a patch of more than %d MiB, not listed)", unexportedScanLimit>>20)}, nil
	}
	if got.err != nil {
		return nil, got.err
	}
	var files []string
	for _, c := range got.cs {
		files = append(files, workspace.QuoteName(c.Path))
	}
	return files, nil
}

// capWriter passes at most n bytes and remembers whether more came.
type capWriter struct {
	w    io.Writer
	n    int64
	over bool
}

func (c *capWriter) Write(p []byte) (int, error) {
	k := len(p)
	if int64(k) > c.n {
		p = p[:c.n]
		c.over = true
	}
	c.n -= int64(len(p))
	if len(p) > 0 {
		if _, err := c.w.Write(p); err != nil {
			return 0, err
		}
	}
	if c.over {
		return 0, errors.New("export patch over the limit")
	}
	return k, nil
}

// copyDisk copies the first size bytes of a work disk image into dst: a
// new sparse file (create), or a spare's slot file, whose inode the
// spare's VMM holds open (sparse and all zeros, of the same size). Only
// in's data extents are written, with copy_file_range (a reflink where
// the filesystem can).
func copyDisk(in *os.File, size int64, dst string, create bool) error {
	flags := os.O_WRONLY
	if create {
		flags |= os.O_CREATE | os.O_EXCL
	}
	out, err := os.OpenFile(dst, flags, 0o644)
	if err != nil {
		return err
	}
	if create {
		err = out.Truncate(size)
	}
	if err == nil {
		err = disk.CopyData(in, out, size)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
