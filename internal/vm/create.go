package vm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/agentbin"
	"github.com/banger-sh/banger/internal/config"
	"github.com/banger-sh/banger/internal/crashpoint"
	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/image"
	"github.com/banger-sh/banger/internal/initrd"
	"github.com/banger-sh/banger/internal/store"
	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/warm"
)

// undo is a stack of cleanup steps run in reverse order when an operation
// fails. Steps run detached from the request's context, with a timeout, so
// an interrupted request still cleans up.
type undo []func(ctx context.Context)

func (u *undo) push(f func(ctx context.Context)) { *u = append(*u, f) }

func (u undo) run() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := len(u) - 1; i >= 0; i-- {
		u[i](ctx)
	}
}

// validate checks a create request and fills defaults.
func (m *Manager) validate(req *api.CreateVMRequest) (Spec, error) {
	cfg := m.opts.Config
	if req.Name == "" {
		req.Name = RandomName()
	}
	if !ValidName(req.Name) {
		return Spec{}, errdefs.InvalidArgument(fmt.Sprintf("invalid vm name %q: use lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit", req.Name))
	}
	s := Spec{VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB, ImageName: req.Image}
	if s.VCPUs == 0 {
		s.VCPUs = cfg.VM.VCPUs
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = cfg.VM.MemoryMiB
	}
	if s.ImageName == "" {
		s.ImageName = cfg.VM.Image
	}
	if !image.ValidName(s.ImageName) {
		return Spec{}, errdefs.InvalidArgument(fmt.Sprintf("--image %q is not an image name (letters, digits, '.', '_' and '-', starting with a letter or digit)", s.ImageName))
	}
	if err := checkShape(s.VCPUs, s.MemoryMiB); err != nil {
		return Spec{}, err
	}
	d := req.Disk
	if d == "" {
		d = cfg.VM.Disk
	}
	n, err := config.ParseSize(d)
	if err != nil {
		return Spec{}, errdefs.InvalidArgument(fmt.Sprintf("--disk: %v", err))
	}
	s.DiskBytes = n
	if s.Net, err = m.egress(req.Net); err != nil {
		return Spec{}, err
	}
	if req.Workspace != nil {
		if _, err := workspacePath(req.Workspace.Path); err != nil {
			return Spec{}, err
		}
	}
	return s, nil
}

// CheckCreate checks a create request as Create does, without making
// anything (a run checks its VM before it starts).
func (m *Manager) CheckCreate(req api.CreateVMRequest) error {
	_, err := m.validate(&req)
	return err
}

func checkShape(vcpus, mem int) error {
	if vcpus < 1 || vcpus > 64 {
		return errdefs.InvalidArgument(fmt.Sprintf("--vcpu %d: must be between 1 and 64", vcpus))
	}
	if mem < 128 || mem > 65536 {
		return errdefs.InvalidArgument(fmt.Sprintf("--mem %d: must be between 128 and 65536 MiB", mem))
	}
	return nil
}

// Create reserves the name, builds the VM's disks, boots it and waits for
// its agent. On any failure, or when ctx ends first, everything done so far
// is undone: no row, no disk, no process, no socket.
func (m *Manager) Create(ctx context.Context, req api.CreateVMRequest, progress Progress) (api.VM, error) {
	spec, err := m.validate(&req)
	if err != nil {
		return api.VM{}, err
	}
	img, err := m.opts.Images.Resolve(ctx, spec.ImageName, progress)
	if err != nil {
		return api.VM{}, err
	}
	man, err := image.Load(img.Dir)
	if err != nil {
		return api.VM{}, fmt.Errorf("image %s: %w", img.Name, err)
	}
	if spec.DiskBytes < man.RootfsSize {
		return api.VM{}, errdefs.InvalidArgument(fmt.Sprintf("--disk %d bytes is smaller than image %s's root filesystem (%d bytes)", spec.DiskBytes, img.Name, man.RootfsSize))
	}
	spec.ImageDigest = img.Digest
	spec.Backend = m.backend.Name()

	var u undo
	ok := false
	defer func() {
		if !ok {
			u.run()
		}
	}()

	r := &record{row: &store.VM{ID: newID(), Name: req.Name, ImageID: img.ID, State: StateCreating}, spec: spec}
	// What can serve this VM warm: a spare clone of its shape, when one
	// is ready (or being made), whose id the VM takes (its files are that
	// id's), or the shape's template.
	initrd, err := m.initrd(man)
	if err != nil {
		return api.VM{}, err
	}
	claim := m.claim(ctx, r, man, initrd, req)
	if id := claim.ID(); id != "" {
		r.row.ID = id
	}
	r.row.Spec, _ = jsonMarshal(spec)
	if err := m.store.InsertVM(ctx, r.row); err != nil {
		claim.Return() // e.g. the name is taken: a spare is still pristine
		return api.VM{}, err
	}
	crashpoint.Hit("create.row")
	u.push(func(context.Context) { claim.Discard() })
	id := r.row.ID
	u.push(func(ctx context.Context) {
		if err := m.store.DeleteVM(ctx, id); err != nil {
			m.log.Warn("undo create: delete row", "vm", req.Name, "err", err)
		}
		m.forgetLock(id)
	})
	unlock := m.lock(id)
	defer unlock()

	m.log.Info("create vm", "vm", req.Name, "id", id, "image", img.Name, "vcpus", spec.VCPUs, "mem", spec.MemoryMiB)
	progress.Phase("disk", "copy-on-write root over image "+img.Name)
	if err := os.MkdirAll(m.layout.VMDir(id), 0o755); err != nil {
		return api.VM{}, err
	}
	u.push(func(context.Context) { os.RemoveAll(m.layout.VMDir(id)) })
	if req.Workspace != nil {
		progress.Phase("workspace", "attaching work disk")
		u.push(func(context.Context) { m.dropShadow(id) }) // before its directory goes
		if r.spec.Workspace, err = m.adoptWorkDisk(ctx, id, req.Workspace, claim.Spare()); err != nil {
			return api.VM{}, err
		}
	}
	clone, err := claim.Start(ctx, m.guest(r, &u, progress))
	if err != nil {
		return api.VM{}, err
	}
	if clone != nil {
		m.ownClone(r, clone, &u)
		if err := m.cloneRunning(ctx, r, clone, progress); err != nil {
			return api.VM{}, err
		}
		ok = true
		how := "vm running (warm)"
		if clone.Spare {
			how = "vm running (warm, spare clone)"
		}
		m.log.Info(how, "vm", req.Name, "id", id, "pid", r.handle.PID, "template", clone.Key)
		return m.toAPI(ctx, r), nil
	}
	if r.spec.Workspace == nil || !r.spec.Workspace.Disk {
		// An empty work-disk slot (sparse: free), as a clone has: a
		// workspace prepared later is attached there.
		if err := disk.Sparse(m.layout.VMWorkDisk(id), api.WorkSlotBytes); err != nil {
			return api.VM{}, fmt.Errorf("create work-disk slot: %w", err)
		}
		r.spec.WorkSlot = true
	}
	if _, err := m.makeRoot(ctx, id, disk.Image{Path: man.Path(image.FileRootfs), Format: disk.FormatRaw}, spec.DiskBytes); err != nil {
		return api.VM{}, fmt.Errorf("create root disk: %w", err)
	}
	crashpoint.Hit("create.disk")
	booted := claim.ColdBoot() // the shape's template, built in the background
	if err := m.boot(ctx, r, man, progress, &u, true); err != nil {
		return api.VM{}, err
	}
	booted()
	ok = true
	m.log.Info("vm running", "vm", req.Name, "id", id, "pid", r.handle.PID)
	return m.toAPI(ctx, r), nil
}

// boot starts the VMM for r, waits for its agent and configures the guest,
// then records the VM as running. Steps that need undoing are pushed on u.
// The VMM process is never tied to ctx: ctx bounds only the waiting.
func (m *Manager) boot(ctx context.Context, r *record, man *image.Manifest, progress Progress, u *undo, fresh bool) error {
	id := r.row.ID
	nics, netcfg, err := m.attachNet(ctx, r, u, fresh)
	if err != nil {
		return err
	}
	crashpoint.Hit("boot.net")
	disks, mounts := m.workDisks(r)
	initrdPath, err := m.initrd(man)
	if err != nil {
		return err
	}
	rt := m.layout.VMRuntimeDir(id)
	os.RemoveAll(rt)
	if err := os.MkdirAll(rt, 0o700); err != nil {
		return err
	}
	u.push(func(context.Context) { os.RemoveAll(rt) })
	root := m.rootDisk(id)
	if !slices.Contains(m.backend.RootFormats(), root.Format) {
		return errdefs.Conflict(fmt.Sprintf("vm %s: its root disk is %s, which backend %s does not take (it takes %v)", r.row.Name, root.Format, m.backend.Name(), m.backend.RootFormats()))
	}
	spec := warm.Spec(m.layout, id, r.spec.VCPUs, r.spec.MemoryMiB, warm.SourceOf(man, initrdPath), root, disks, nics, nil)
	progress.Phase("boot", fmt.Sprintf("%s, %d vCPU, %d MiB", m.backend.Name(), spec.VCPUs, spec.MemoryMiB))
	start := time.Now()
	h, err := m.backend.Start(ctx, spec)
	if err != nil {
		return fmt.Errorf("start vm %s: %w", r.row.Name, err)
	}
	crashpoint.Hit("boot.vmm")
	u.push(func(ctx context.Context) {
		m.dropAgent(id)
		if err := m.backend.Kill(ctx, h); err != nil {
			m.log.Warn("undo boot: kill", "vm", r.row.Name, "err", err)
		}
	})
	r.handle = h
	r.spec.Boot = "cold"
	if err := r.save(ctx, m.store); err != nil {
		return err
	}
	crashpoint.Hit("boot.saved")
	progress.Phase("agent", "waiting for the guest agent")
	if err := m.waitReady(ctx, r, netcfg, mounts); err != nil {
		return err
	}
	crashpoint.Hit("boot.ready")
	if err := m.openForwards(ctx, r); err != nil {
		return err
	}
	u.push(func(context.Context) { m.closeForwards(id) })
	progress.Phase("ready", fmt.Sprintf("guest ready in %s", time.Since(start).Round(10*time.Millisecond)))
	r.row.State = StateRunning
	r.row.StartedAt = time.Now()
	r.row.LastError = ""
	if err := r.save(ctx, m.store); err != nil {
		return err
	}
	m.startWatch(r)
	m.growRoot(r, man)
	return nil
}

// growRoot grows the guest's root filesystem to its disk (the image's
// ext4 is smaller than a VM's disk by default) with an online resize2fs,
// in the background: it does not delay the VM's readiness, and runs once
// per boot only while the filesystem is smaller than the disk.
func (m *Manager) growRoot(r *record, man *image.Manifest) {
	if r.spec.DiskBytes <= man.RootfsSize {
		return
	}
	name, id := r.row.Name, r.row.ID
	rec := *r
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		ctx, cancel := context.WithTimeout(m.bgCtx, 5*time.Minute)
		defer cancel()
		c, err := m.agent(ctx, &rec)
		if err != nil {
			return
		}
		var errb strings.Builder
		p, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"resize2fs", "/dev/vda"}, Stdout: io.Discard, Stderr: &limited{w: &errb, n: 4 << 10}})
		if err != nil {
			m.log.Info("grow root filesystem: not done", "vm", name, "id", id, "err", err)
			return
		}
		st, err := p.Wait()
		switch {
		case err != nil: // the VM went away (deleted, stopped) meanwhile
			m.log.Info("grow root filesystem: not done", "vm", name, "err", err)
			return
		case st.Code != 0:
			m.log.Warn("grow root filesystem", "vm", name, "exit", st.Code, "stderr", errb.String())
			return
		}
		m.log.Info("root filesystem grown to the disk", "vm", name)
	}()
}

// waitReady waits until the guest's agent answers, then applies the
// per-VM configuration.
func (m *Manager) waitReady(ctx context.Context, r *record, netcfg *agent.NetConfig, mounts []agent.Mount) error {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, m.opts.ReadyTimeout)
	defer cancel()
	var last error
	for {
		if m.backend.Status(ctx, r.handle) == vmm.StateExited {
			return fmt.Errorf("vm %s: the VMM exited during boot: %s", r.row.Name, consoleTail(m.layout.VMConsoleLog(r.row.ID)))
		}
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := m.agent(actx, r)
		if err == nil {
			_, err = c.Ping(actx)
		}
		acancel()
		if err == nil {
			break
		}
		last = err
		m.dropAgent(r.row.ID)
		select {
		case <-ctx.Done():
			if parent.Err() != nil { // the request ended, not the ready timeout
				return fmt.Errorf("vm %s: waiting for the agent: %w", r.row.Name, parent.Err())
			}
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return errdefs.Unavailable(fmt.Sprintf("vm %s: agent not ready after %s (%v); console: %s", r.row.Name, m.opts.ReadyTimeout, last, consoleTail(m.layout.VMConsoleLog(r.row.ID))))
			}
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	c, err := m.agent(ctx, r)
	if err != nil {
		return err
	}
	cfg := agent.GuestConfig{Hostname: r.row.Name, Time: time.Now(), Network: netcfg, AuthorizedKeys: m.opts.AuthorizedKeys, Mounts: mounts}
	if r.row.StartedAt.IsZero() { // first boot: its own machine-id
		cfg.MachineID = newMachineID()
	}
	if err := c.Configure(ctx, cfg); err != nil {
		return fmt.Errorf("vm %s: configure guest: %w", r.row.Name, err)
	}
	return nil
}

// consoleTail is the end of a console log, for error messages.
func consoleTail(path string) string {
	b, err := readTail(path, 1500)
	if err != nil || len(b) == 0 {
		return "(console empty)"
	}
	return string(b)
}

func readTail(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := st.Size() - n
	if off < 0 {
		off = 0
	}
	b := make([]byte, st.Size()-off)
	_, err = f.ReadAt(b, off)
	return b, err
}

// initrd returns the initrd for an image with this build's agent,
// composing it once per (image, agent) pair.
func (m *Manager) initrd(man *image.Manifest) (string, error) {
	bin, err := agentbin.Binary()
	if err != nil {
		return "", err
	}
	d := man.Digest
	if len(d) > 16 {
		d = d[len(d)-16:]
	}
	path := filepath.Join(m.layout.InitrdCacheDir(), fmt.Sprintf("%s-%s.cpio", d, agentbin.Digest()[:16]))
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(m.layout.InitrdCacheDir(), 0o755); err != nil {
		return "", err
	}
	mods := ""
	if man.Has("modules/load-order") || dirExists(man.Path("modules")) {
		mods = man.Path("modules")
	}
	if err := initrd.Compose(path, mods, bin); err != nil {
		return "", fmt.Errorf("compose initrd: %w", err)
	}
	return path, nil
}

func dirExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func newMachineID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}
