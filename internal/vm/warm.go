package vm

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/image"
	"github.com/banger-sh/banger/internal/network"
	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/warm"
)

// Warm starts are internal/warm's (templates, spares, clone identity): a
// create claims what can serve it (warm.Pool.Claim) and starts it
// (warm.Claim.Start); this file is the manager's side of that: what the
// VM is, and recording the clone it gets as the VM.

// claim asks the warm pool what can serve the VM r of a create.
func (m *Manager) claim(ctx context.Context, r *record, man *image.Manifest, initrd string, req api.CreateVMRequest) *warm.Claim {
	w := warm.Want{
		ImageName: r.spec.ImageName, ImageDigest: man.Digest,
		VCPUs: r.spec.VCPUs, MemoryMiB: r.spec.MemoryMiB, RootBytes: r.spec.DiskBytes,
		Source: warm.SourceOf(man, initrd),
		Net:    r.spec.Net != "off" && r.spec.Net != "",
		Cold:   req.Cold,
	}
	if ws := req.Workspace; ws != nil && ws.Disk != nil {
		w.WorkDiskBytes = -1 // unreadable: fits no slot
		if st, err := ws.Disk.Stat(); err == nil {
			w.WorkDiskBytes = st.Size()
		}
	}
	return m.warm.Claim(ctx, w) // a nil pool serves nothing: cold

}

// guest is the VM a clone becomes: its files, mounts and network, whose
// lease the create's undo releases.
func (m *Manager) guest(r *record, u *undo, progress Progress) warm.Guest {
	_, mounts := m.workDisks(r)
	g := warm.Guest{
		ID: r.row.ID, Name: r.row.Name,
		Workspace: r.spec.Workspace != nil && r.spec.Workspace.Disk,
		Mounts:    mounts, Progress: progress,
	}
	if r.spec.Net != "off" && r.spec.Net != "" {
		g.Net = func(ctx context.Context, tap string) ([]vmm.NIC, *agent.NetConfig, error) {
			if tap == "" {
				return m.attachNet(ctx, r, u, true)
			}
			l, err := m.net.AttachTap(ctx, r.row.ID, network.Egress(r.spec.Net), tap)
			if err != nil {
				return nil, nil, fmt.Errorf("network: %w", err)
			}
			id := r.row.ID
			u.push(func(ctx context.Context) { m.net.Detach(ctx, id) })
			return []vmm.NIC{{Tap: l.Tap, MAC: l.MAC}}, m.netConfig(r, l), nil
		}
	}
	return g
}

// ownClone makes a configured clone r's: its agent connection is the
// VM's, and the create's undo kills it.
func (m *Manager) ownClone(r *record, c *warm.Clone, u *undo) {
	id := r.row.ID
	m.mu.Lock()
	m.agents[id] = &agentConn{client: c.Agent}
	m.mu.Unlock()
	h := c.Handle
	u.push(func(ctx context.Context) {
		m.dropAgent(id)
		m.backend.Kill(ctx, h)
		os.RemoveAll(m.layout.VMRuntimeDir(id))
	})
}

// cloneRunning records the clone r owns (ownClone) as r, running. Its
// root filesystem was grown in the template: no resize2fs.
func (m *Manager) cloneRunning(ctx context.Context, r *record, c *warm.Clone, progress Progress) error {
	h := c.Handle
	r.handle = h
	r.spec.Boot, r.spec.Template = "warm", c.Key
	r.spec.WorkSlot = r.spec.Workspace == nil || !r.spec.Workspace.Disk
	r.row.State, r.row.StartedAt, r.row.LastError = StateRunning, time.Now(), ""
	if err := r.save(ctx, m.store); err != nil {
		return err
	}
	if err := m.openForwards(ctx, r); err != nil {
		return err
	}
	m.startWatch(r)
	progress.Phase("ready", fmt.Sprintf("guest ready in %s (warm)", time.Since(c.Started).Round(time.Millisecond)))
	return nil
}

// WarmImage builds the template of an image for a shape now (banger image
// warm), then a spare of it.
func (m *Manager) WarmImage(ctx context.Context, img *image.Manifest, imageName string, vcpus, mem int, diskBytes int64) (*warm.Template, error) {
	if m.warm == nil || !m.warm.Supported() {
		return nil, fmt.Errorf("warm starts: backend %s: %w", m.backend.Name(), vmm.ErrUnsupported)
	}
	sh, err := m.warm.Shape(ctx, imageName, img.Digest, vcpus, mem, diskBytes)
	if err != nil {
		return nil, err
	}
	initrd, err := m.initrd(img)
	if err != nil {
		return nil, err
	}
	return m.warm.Build(ctx, sh, warm.SourceOf(img, initrd))
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
