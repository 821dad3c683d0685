package warm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/image"
	"github.com/banger-sh/banger/internal/network"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/progress"
	"github.com/banger-sh/banger/internal/vmm"
)

// Taps lends host taps to spares (network.Manager does).
type Taps interface {
	AcquireTap(ctx context.Context) (string, error)
	ReleaseTap(ctx context.Context, tap string) error
}

// Options configure a Pool.
type Options struct {
	Store   *Store // the templates; nil: no warm starts
	Backend vmm.Backend
	Layout  paths.Layout
	// Taps, when set, gives spares a tap (then they serve VMs with a
	// NIC, and only those).
	Taps Taps
	// AuthorizedKeys go into every clone's identity.
	AuthorizedKeys []string
	// Spares is how many clones are kept restored ahead of demand, for
	// the shapes used most recently (0: none).
	Spares int
	// NewID makes the VM id a spare will serve as.
	NewID func() string
	Log   *slog.Logger
}

// Pool is warm starts for one daemon: its templates, its spares, and the
// restore of clones with their own identity.
type Pool struct {
	o     Options
	store *Store
	b     vmm.Backend
	l     paths.Layout
	log   *slog.Logger

	mu      sync.Mutex
	spares  map[string]*spare // template key → its spare clone
	closing chan struct{}
	wg      sync.WaitGroup

	bgCtx    context.Context // background work (builds, spares); ends at Close
	bgCancel context.CancelFunc
	building chan struct{} // one background template build at a time
}

// New returns a pool; Close it.
func New(o Options) *Pool {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	p := &Pool{o: o, store: o.Store, b: o.Backend, l: o.Layout, log: o.Log,
		spares: map[string]*spare{}, closing: make(chan struct{}), building: make(chan struct{}, 1)}
	p.bgCtx, p.bgCancel = context.WithCancel(context.Background())
	return p
}

// Store is the pool's templates (nil when warm starts are off).
func (p *Pool) Store() *Store { return p.store }

// Supported reports whether warm starts can happen: templates on and a
// backend that snapshots. A nil pool supports nothing (its Claims are
// cold).
func (p *Pool) Supported() bool { return p != nil && p.store != nil && p.store.Supported() }

// Close kills the spares and waits for background work (template builds
// end, their VMs killed).
func (p *Pool) Close() {
	p.mu.Lock()
	select {
	case <-p.closing:
	default:
		close(p.closing)
	}
	p.mu.Unlock()
	p.bgCancel()
	p.closeSpares()
	p.wg.Wait()
}

// Shape is the template shape of a VM: templates have one NIC slot and a
// work-disk slot of api.WorkSlotBytes, so that a clone can be given its
// own tap and its own workspace disk at restore time.
func (p *Pool) Shape(ctx context.Context, imageName, imageDigest string, vcpus, mem int, rootBytes int64) (Shape, error) {
	if !p.Supported() {
		return Shape{}, fmt.Errorf("warm starts: backend %s: %w", p.b.Name(), vmm.ErrUnsupported)
	}
	return p.store.Complete(ctx, Shape{
		ImageName: imageName, ImageDigest: imageDigest,
		VCPUs: vcpus, MemoryMiB: mem, RootBytes: rootBytes,
		WorkDiskBytes: api.WorkSlotBytes, NICs: 1,
	})
}

// SourceOf is what VMs of an image boot from, with the initrd that
// carries the agent.
func SourceOf(man *image.Manifest, initrd string) Source {
	kernel := man.Path("vmlinux")
	if !man.Has("vmlinux") {
		kernel = man.Path("bzImage")
	}
	return Source{Kernel: kernel, Initrd: initrd, RootBase: man.Path(image.FileRootfs), RootBaseFormat: disk.FormatRaw}
}

// Spec is the vmm.Spec of VM id in layout l: the one function that builds
// it, for a cold boot (t nil) and for a restore of template t (a spare or
// a clone made on demand).
func Spec(l paths.Layout, id string, vcpus, mem int, src Source, root vmm.Disk, disks []vmm.Disk, nics []vmm.NIC, t *Template) vmm.Spec {
	spec := vmm.Spec{
		ID: id, VCPUs: vcpus, MemoryMiB: mem,
		Kernel: src.Kernel, Initrd: src.Initrd,
		Root: root, Disks: disks, NICs: nics,
		RuntimeDir: l.VMRuntimeDir(id),
		ConsoleLog: l.VMConsoleLog(id), VMMLog: l.VMVMMLog(id),
	}
	if t != nil {
		spec.Restore = t.Snapshot()
	}
	return spec
}

// Want is the VM a create is about to start.
type Want struct {
	ImageName, ImageDigest string
	VCPUs, MemoryMiB       int
	RootBytes              int64
	Source                 Source
	// Net: the VM has a NIC.
	Net bool
	// Cold: the client asked for a cold boot.
	Cold bool
	// WorkDiskBytes is the size of the workspace disk the VM brings
	// (0: none). Only a disk the size of the slot fits a clone.
	WorkDiskBytes int64
}

// Claim is what can serve one create: a spare (taken out of the pool:
// the VM must take its id), a template, or neither. Call Start once, or
// Return / Discard when the create fails before it.
type Claim struct {
	p       *Pool
	want    Want
	shape   Shape // completed; zero when warm starts are unavailable
	spare   *spare
	started bool
	// restored: Start tried a restore of the shape's template (so the
	// template exists: a cold boot need not build it).
	restored bool
}

// templateWait bounds how long a create waits for the template of its
// shape being built before it boots cold instead.
const templateWait = 10 * time.Second

// Claim takes the spare of the wanted shape when one is ready (waiting
// for one being made), else reserves nothing: Start then restores from
// the shape's template, if there is one.
func (p *Pool) Claim(ctx context.Context, w Want) *Claim {
	c := &Claim{p: p, want: w}
	if w.Cold || !p.Supported() {
		return c
	}
	sh, err := p.Shape(ctx, w.ImageName, w.ImageDigest, w.VCPUs, w.MemoryMiB, w.RootBytes)
	if err != nil {
		p.log.Info("warm start unavailable", "err", err)
		return c
	}
	c.shape = sh
	if p.o.Spares > 0 && (!w.Net || p.o.Taps != nil) && (w.WorkDiskBytes == 0 || w.WorkDiskBytes == api.WorkSlotBytes) {
		c.spare = p.takeSpare(ctx, sh.Key(), w.Net)
	}
	return c
}

// ID is the VM id the create must use: the spare's, or "" (its own).
func (c *Claim) ID() string {
	if c.spare == nil {
		return ""
	}
	return c.spare.id
}

// Spare reports whether a spare serves (then the VM's workspace disk is
// copied into the slot the spare holds open, see Guest.Workspace).
func (c *Claim) Spare() bool { return c.spare != nil }

// Return puts back an untouched spare (the create failed before it made
// anything of the VM, e.g. its name is taken).
func (c *Claim) Return() {
	if c.spare != nil && !c.started {
		c.p.returnSpare(c.spare)
		c.spare = nil
	}
}

// Discard destroys the spare of a create that failed before Start.
// After Start it does nothing (Start took the spare over).
func (c *Claim) Discard() {
	if c.spare != nil && !c.started {
		c.p.retireSpare(c.spare)
		c.spare = nil
	}
}

// Guest is the VM a clone becomes.
type Guest struct {
	ID, Name string
	// Workspace: the VM's workspace disk is at Layout.VMWorkDisk(ID)
	// (copied into the spare's slot when a spare serves); Mounts mount
	// it. Otherwise the clone gets an empty slot there.
	Workspace bool
	Mounts    []agent.Mount
	// Net gives the VM its network, on the spare's tap (tap != "") or
	// a new one, and returns its NICs and their guest configuration;
	// the caller undoes it. nil: no network.
	Net      func(ctx context.Context, tap string) ([]vmm.NIC, *agent.NetConfig, error)
	Progress progress.Func
}

// Clone is a restored VM with its identity applied: running, its agent
// connected. The caller owns it (its process, runtime dir and agent).
type Clone struct {
	Handle   vmm.Handle
	Agent    *agent.Client
	Key      string    // its template's
	Spare    bool      // a spare served
	Started  time.Time // when the restore began
	Template *Template
}

// Start makes the claimed VM a clone: the spare's (adopted: the lease on
// its tap, then the VM's identity) or, when there is none or it fails, a
// restore of the shape's template. It returns nil, nil when the VM must
// boot cold (reason logged and reported), and an error only when ctx
// ended. A failed attempt leaves nothing of itself; the VM's own files
// (workspace disk) stay.
func (c *Claim) Start(ctx context.Context, g Guest) (*Clone, error) {
	c.started = true
	p := c.p
	if s := c.spare; s != nil {
		c.spare = nil
		s.holdsWorkspace = g.Workspace
		cl, err := p.adoptSpare(ctx, s, g)
		if err == nil {
			p.fillSpare(c.shape, c.want.Source)
			return cl, nil
		}
		p.destroySpare(s, true)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		p.log.Warn("spare clone failed: restoring on demand", "vm", g.Name, "template", s.key, "err", err)
		g.Progress.Phase("warning", fmt.Sprintf("spare clone failed (%v): restoring on demand", err))
	}
	t := c.template(ctx, g)
	if t == nil {
		return nil, nil
	}
	c.restored = true
	cl, err := p.restore(ctx, t, c.want, g)
	if err == nil {
		p.fillSpare(c.shape, c.want.Source)
		return cl, nil
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	p.log.Warn("warm start failed: booting cold", "vm", g.Name, "template", t.Key, "err", err)
	g.Progress.Phase("warning", fmt.Sprintf("warm start failed (%v): booting cold", err))
	return nil, nil
}

// template is the template the VM can be restored from, or nil (reason
// logged) when it must boot cold.
func (c *Claim) template(ctx context.Context, g Guest) *Template {
	p, sh := c.p, c.shape
	if sh.Backend == "" { // warm starts unavailable (or --cold)
		return nil
	}
	if g.Workspace {
		if st, err := os.Stat(p.l.VMWorkDisk(g.ID)); err != nil || st.Size() != api.WorkSlotBytes {
			p.log.Info("workspace disk does not fit the warm slot: cold boot", "vm", g.Name)
			return nil
		}
	}
	t, ok := p.store.Lookup(sh.Key())
	if done := p.store.Building(sh.Key()); !ok && done != nil {
		// Being built, alongside a cold boot of this shape moments ago:
		// usually done sooner than a cold boot would be.
		g.Progress.Phase("template", "waiting for the warm-start template being built")
		select {
		case <-done:
		case <-ctx.Done():
		case <-time.After(templateWait):
			p.log.Info("template still being built: cold boot", "vm", g.Name, "template", sh.Key())
		}
		t, ok = p.store.Lookup(sh.Key())
	}
	if !ok {
		if _, err := os.Stat(p.l.TemplateDir(sh.Key())); err == nil {
			// There, but incomplete or damaged: say so, boot cold; it is
			// rebuilt in the background.
			p.log.Warn("warm template damaged: cold boot", "vm", g.Name, "template", sh.Key())
			g.Progress.Phase("warning", fmt.Sprintf("warm-start template %s is damaged: booting cold (it will be rebuilt)", sh.Key()[:12]))
		}
		return nil
	}
	return t
}

// ColdBoot is called by a create that boots cold after Start returned
// nil. When the shape has no template, it is built in the background:
// now if a CPU is to spare (so that the next create, even right after
// this one, is warm), else by the function returned, which the create
// calls once its VM is up (never slowing it down).
func (c *Claim) ColdBoot() (booted func()) {
	if c.shape.Backend == "" || c.restored {
		return func() {}
	}
	if runtime.NumCPU() > c.want.VCPUs {
		c.p.buildLater(c.shape, c.want.Source)
		return func() {}
	}
	return func() { c.p.buildLater(c.shape, c.want.Source) }
}

// restore starts a clone of t as the VM g. On failure it undoes what it
// did (process, clone root, empty slot, runtime dir).
func (p *Pool) restore(ctx context.Context, t *Template, w Want, g Guest) (_ *Clone, err error) {
	id := g.ID
	start := time.Now()
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	root, err := t.CloneRoot(ctx, p.l.VMRootStem(id))
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { os.Remove(root.Path) })
	var nics []vmm.NIC
	var netcfg *agent.NetConfig
	if g.Net != nil {
		if nics, netcfg, err = g.Net(ctx, ""); err != nil {
			return nil, err
		}
	}
	if len(nics) == 0 {
		nics = []vmm.NIC{{MAC: network.MACFor(id)}} // the slot, with no host side
	}
	slot := p.l.VMWorkDisk(id)
	if !g.Workspace {
		if err := disk.Sparse(slot, api.WorkSlotBytes); err != nil {
			return nil, err
		}
		undo = append(undo, func() { os.Remove(slot) })
	}
	rt := p.l.VMRuntimeDir(id)
	os.RemoveAll(rt)
	if err := os.MkdirAll(rt, 0o700); err != nil {
		return nil, err
	}
	undo = append(undo, func() { os.RemoveAll(rt) })
	g.Progress.Phase("restore", "warm start from template "+t.Key[:12])
	h, err := p.b.Start(ctx, Spec(p.l, id, w.VCPUs, w.MemoryMiB, w.Source, root, []vmm.Disk{{Path: slot, Format: disk.FormatRaw}}, nics, t))
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { p.kill(h) })
	gc, err := p.identity(g, netcfg)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c, err := ConfigureClone(cctx, p.b, h, gc)
	if err != nil {
		return nil, err
	}
	return &Clone{Handle: h, Agent: c, Key: t.Key, Started: start, Template: t}, nil
}

// identity is the VM g's own identity (Identity), with its mounts.
func (p *Pool) identity(g Guest, netcfg *agent.NetConfig) (agent.GuestConfig, error) {
	gc, err := Identity(g.Name, netcfg, p.o.AuthorizedKeys)
	gc.Mounts = g.Mounts
	return gc, err
}

// kill kills a VMM process of the pool's (an undo: its own deadline).
func (p *Pool) kill(h vmm.Handle) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.b.Kill(ctx, h); err != nil {
		p.log.Warn("warm: kill", "pid", h.PID, "err", err)
	}
}

// Build builds the template of shape sh now (banger image warm), then a
// spare of it.
func (p *Pool) Build(ctx context.Context, sh Shape, src Source) (*Template, error) {
	if !p.Supported() {
		return nil, fmt.Errorf("warm starts: backend %s: %w", p.b.Name(), vmm.ErrUnsupported)
	}
	t, err := p.store.Build(ctx, sh, src)
	if err == nil {
		p.fillSpare(sh, src)
	}
	return t, err
}

// buildLater builds the template of a shape in the background, one build
// at a time (builds of other shapes wait their turn), then a spare of it.
func (p *Pool) buildLater(sh Shape, src Source) {
	if !p.Supported() || sh.Backend == "" || sh.ImageDigest == "" {
		return
	}
	p.background(func() {
		select {
		case p.building <- struct{}{}:
		case <-p.bgCtx.Done():
			return
		}
		defer func() { <-p.building }()
		if _, ok := p.store.Lookup(sh.Key()); ok {
			return // built meanwhile
		}
		start := time.Now()
		if _, err := p.store.Build(p.bgCtx, sh, src); err != nil {
			if !errors.Is(err, context.Canceled) {
				p.log.Warn("template build failed", "image", sh.ImageName, "key", sh.Key(), "err", err)
			}
			return
		}
		p.log.Info("template built", "image", sh.ImageName, "key", sh.Key(), "took", time.Since(start).String())
		p.fillSpare(sh, src)
	})
}

// background runs f in a goroutine that Close waits for; once Close has
// begun, f runs now, in the caller (a WaitGroup must not grow while it is
// waited for).
func (p *Pool) background(f func()) {
	p.mu.Lock()
	select {
	case <-p.closing:
		p.mu.Unlock()
		f()
		return
	default:
	}
	p.wg.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.wg.Done()
		f()
	}()
}

// Prune removes the templates that are broken, half-built or unused
// (keep says which to keep: a VM's disk depends on it), with their
// spares, and returns them with the bytes each freed.
func (p *Pool) Prune(keep func(*Template) bool) ([]*Template, map[string]int64, error) {
	if !p.Supported() {
		return nil, nil, nil
	}
	sizes := map[string]int64{}
	if list, err := p.store.List(); err == nil {
		for _, t := range list {
			sizes[t.Key] = t.Bytes()
		}
	}
	removed, err := p.store.Prune(keep)
	for _, t := range removed {
		p.DropSpare(t.Key)
	}
	return removed, sizes, err
}

// PruneStale is the daemon's start-up clean-up: broken and half-built
// templates go, and those made for another image digest (imageDigest:
// the digest of an image by name, false when it is gone), agent or VMM
// build, unless inUse says a VM's disk depends on them.
func (p *Pool) PruneStale(ctx context.Context, imageDigest func(name string) (string, bool), inUse func(key string) bool) {
	if !p.Supported() {
		return
	}
	if removed, err := p.store.Prune(func(*Template) bool { return true }); err != nil {
		p.log.Warn("prune templates", "err", err)
	} else if len(removed) > 0 {
		p.log.Info("removed broken templates", "n", len(removed))
	}
	cur, err := p.store.Complete(ctx, Shape{})
	if err != nil {
		return
	}
	if removed, err := p.store.RemoveStale(cur, imageDigest, inUse); err != nil {
		p.log.Warn("remove stale templates", "err", err)
	} else if len(removed) > 0 {
		p.log.Info("removed stale templates", "n", len(removed))
	}
}

// Of lists the templates of an image digest.
func (p *Pool) Of(imageDigest string) []*Template {
	if !p.Supported() {
		return nil
	}
	list, _ := p.store.List()
	var out []*Template
	for _, t := range list {
		if t.Shape.ImageDigest == imageDigest {
			out = append(out, t)
		}
	}
	return out
}

// ImageRemoved drops the spares of an image's templates (the templates
// themselves go at the next PruneStale: a stopped clone may still need
// one).
func (p *Pool) ImageRemoved(imageDigest string) {
	for _, t := range p.Of(imageDigest) {
		p.DropSpare(t.Key)
	}
}
