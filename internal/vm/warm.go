package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/image"
	"github.com/banger-sh/banger/internal/network"
	"github.com/banger-sh/banger/internal/template"
	"github.com/banger-sh/banger/internal/vmm"
)

// Warm starts. Every shape (image, vCPUs, memory, root size) gets a
// template the first time a VM of that shape boots cold: built in the
// background, never delaying that VM. Later creates of the shape restore a
// clone of it (about a tenth of a cold boot) and hand it its own identity
// (RNG seed, clock, hostname, machine-id, MAC and address) before it
// counts as ready. A template that is missing, damaged or refused by the
// VMM means a cold boot with a warning, never a failure.
//
// Templates are born with one NIC slot and a work-disk slot of
// api.WorkSlotBytes, so that a clone can be given its own tap and its own
// workspace disk at restore time.

// shape is the template shape of a VM record.
func (m *Manager) shape(ctx context.Context, r *record, man *image.Manifest) (template.Shape, error) {
	return m.opts.Templates.Complete(ctx, template.Shape{
		ImageName: r.spec.ImageName, ImageDigest: man.Digest,
		VCPUs: r.spec.VCPUs, MemoryMiB: r.spec.MemoryMiB, RootBytes: r.spec.DiskBytes,
		WorkDiskBytes: api.WorkSlotBytes, NICs: 1,
	})
}

// templateWait bounds how long a create waits for the template of its
// shape being built before it boots cold instead.
const templateWait = 10 * time.Second

// warmTemplate returns the template a new VM can be cloned from, or nil
// (with the reason logged) when it must boot cold.
func (m *Manager) warmTemplate(ctx context.Context, r *record, man *image.Manifest, cold bool, progress Progress) (*template.Template, template.Shape) {
	if cold || m.opts.Templates == nil || !m.opts.Templates.Supported() {
		return nil, template.Shape{}
	}
	sh, err := m.shape(ctx, r, man)
	if err != nil {
		m.log.Info("warm start unavailable", "vm", r.row.Name, "err", err)
		return nil, template.Shape{}
	}
	if ws := r.spec.Workspace; ws != nil && ws.Disk {
		if st, err := os.Stat(m.layout.VMWorkDisk(r.row.ID)); err != nil || st.Size() != api.WorkSlotBytes {
			m.log.Info("workspace disk does not fit the warm slot: cold boot", "vm", r.row.Name)
			return nil, sh
		}
	}
	t, ok := m.opts.Templates.Lookup(sh.Key())
	if done := m.opts.Templates.Building(sh.Key()); !ok && done != nil {
		// Being built, alongside a cold boot of this shape moments ago:
		// usually done sooner than a cold boot would be.
		progress.Phase("template", "waiting for the warm-start template being built")
		select {
		case <-done:
		case <-ctx.Done():
		case <-time.After(templateWait):
			m.log.Info("template still being built: cold boot", "vm", r.row.Name, "template", sh.Key())
		}
		t, ok = m.opts.Templates.Lookup(sh.Key())
	}
	if !ok {
		if _, err := os.Stat(m.layout.TemplateDir(sh.Key())); err == nil {
			// There, but incomplete or damaged: say so, boot cold; it is
			// rebuilt in the background.
			m.log.Warn("warm template damaged: cold boot", "vm", r.row.Name, "template", sh.Key())
			progress.Phase("warning", fmt.Sprintf("warm-start template %s is damaged: booting cold (it will be rebuilt)", sh.Key()[:12]))
		}
		return nil, sh
	}
	return t, sh
}

// bootWarm restores a clone of t as r. On failure it undoes what it did
// (process, clone root, runtime dir) and the caller boots cold.
func (m *Manager) bootWarm(ctx context.Context, r *record, man *image.Manifest, t *template.Template, progress Progress, u *undo) (err error) {
	id := r.row.ID
	initrd, err := m.initrd(man)
	if err != nil {
		return err
	}
	start := time.Now()
	var local undo
	defer func() {
		if err != nil {
			local.run()
		}
	}()
	root, err := t.CloneRoot(ctx, m.layout.VMRootStem(id))
	if err != nil {
		return err
	}
	local.push(func(context.Context) { os.Remove(root.Path) })
	nics, netcfg, err := m.attachNet(ctx, r, u, true)
	if err != nil {
		return err
	}
	if len(nics) == 0 {
		nics = []vmm.NIC{{MAC: network.MACFor(id)}} // the slot, with no host side
	}
	disks, mounts := m.workDisks(r)
	if len(disks) == 0 {
		slot := m.layout.VMWorkDisk(id)
		if err := sparse(slot, api.WorkSlotBytes); err != nil {
			return err
		}
		local.push(func(context.Context) { os.Remove(slot) })
		disks = []vmm.Disk{{Path: slot, Format: disk.FormatRaw}}
	}
	rt := m.layout.VMRuntimeDir(id)
	os.RemoveAll(rt)
	if err := os.MkdirAll(rt, 0o700); err != nil {
		return err
	}
	local.push(func(context.Context) { os.RemoveAll(rt) })
	progress.Phase("restore", "warm start from template "+t.Key[:12])
	src := m.templateSource(man, initrd)
	h, err := m.backend.Start(ctx, m.vmSpec(id, r.spec.VCPUs, r.spec.MemoryMiB, src, root, disks, nics, t))
	if err != nil {
		return err
	}
	local.push(func(ctx context.Context) {
		m.dropAgent(id)
		m.backend.Kill(ctx, h)
	})
	gc, err := template.Identity(r.row.Name, netcfg, m.opts.AuthorizedKeys)
	if err != nil {
		return err
	}
	gc.Mounts = mounts
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c, err := template.ConfigureClone(cctx, m.backend, h, gc)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.agents[id] = &agentConn{client: c}
	m.mu.Unlock()

	// From here the VM is ours: the create's undo owns it.
	u.push(func(ctx context.Context) {
		m.dropAgent(id)
		m.backend.Kill(ctx, h)
		os.RemoveAll(rt)
	})
	local = nil
	return m.cloneRunning(ctx, r, h, t.Key, start, progress)
}

// cloneRunning records a configured clone of template key as r, running.
// Its root filesystem was grown in the template: no resize2fs.
func (m *Manager) cloneRunning(ctx context.Context, r *record, h vmm.Handle, key string, start time.Time, progress Progress) error {
	r.handle = h
	r.spec.Boot, r.spec.Template = "warm", key
	r.spec.WorkSlot = r.spec.Workspace == nil || !r.spec.Workspace.Disk
	r.row.State, r.row.StartedAt, r.row.LastError = StateRunning, time.Now(), ""
	if err := r.save(ctx, m.store); err != nil {
		return err
	}
	if err := m.openForwards(ctx, r); err != nil {
		return err
	}
	m.startWatch(r)
	progress.Phase("ready", fmt.Sprintf("guest ready in %s (warm)", time.Since(start).Round(time.Millisecond)))
	return nil
}

// buildTemplateLater builds the template of a shape in the background,
// one build at a time (builds of other shapes wait their turn).
func (m *Manager) buildTemplateLater(sh template.Shape, man *image.Manifest, initrd string) {
	if m.opts.Templates == nil || sh.Key() == "" || sh.ImageDigest == "" {
		return
	}
	m.background(func() {
		select {
		case m.building <- struct{}{}:
		case <-m.bgCtx.Done():
			return
		}
		defer func() { <-m.building }()
		if _, ok := m.opts.Templates.Lookup(sh.Key()); ok {
			return // built meanwhile
		}
		start := time.Now()
		_, err := m.opts.Templates.Build(m.bgCtx, sh, m.templateSource(man, initrd))
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				m.log.Warn("template build failed", "image", sh.ImageName, "key", sh.Key(), "err", err)
			}
			return
		}
		m.log.Info("template built", "image", sh.ImageName, "key", sh.Key(), "took", time.Since(start).String())
		m.fillSpare(sh, man)
	})
}

func (m *Manager) templateSource(man *image.Manifest, initrd string) template.Source {
	kernel := man.Path("vmlinux")
	if !man.Has("vmlinux") {
		kernel = man.Path("bzImage")
	}
	return template.Source{Kernel: kernel, Initrd: initrd, RootBase: man.Path(image.FileRootfs), RootBaseFormat: disk.FormatRaw}
}

// WarmImage builds the template of an image for a shape now (banger image
// warm) and returns its key.
func (m *Manager) WarmImage(ctx context.Context, img *image.Manifest, imageName string, vcpus, mem int, disk int64) (*template.Template, error) {
	if m.opts.Templates == nil || !m.opts.Templates.Supported() {
		return nil, fmt.Errorf("warm starts: backend %s: %w", m.backend.Name(), vmm.ErrUnsupported)
	}
	r := &record{row: nil, spec: Spec{ImageName: imageName, VCPUs: vcpus, MemoryMiB: mem, DiskBytes: disk}}
	sh, err := m.shape(ctx, r, img)
	if err != nil {
		return nil, err
	}
	initrd, err := m.initrd(img)
	if err != nil {
		return nil, err
	}
	t, err := m.opts.Templates.Build(ctx, sh, m.templateSource(img, initrd))
	if err == nil {
		m.fillSpare(sh, img)
	}
	return t, err
}

// TemplateInUse reports whether any VM's disk is backed by the template.
func (m *Manager) TemplateInUse(key string) bool {
	rows, err := m.store.ListVMs(context.Background())
	if err != nil {
		return true // when in doubt, keep it
	}
	for _, row := range rows {
		if r, err := load(row); err == nil && r.spec.Template == key {
			// A clone whose root is a copy (not an overlay) does not
			// need its template.
			img, ok := disk.Existing(m.layout.VMRootStem(row.ID))
			if !ok || disk.ReadsBase(img) {
				return true
			}
		}
	}
	return false
}

func sparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}
