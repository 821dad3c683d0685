package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/crashpoint"
	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/image"
	"github.com/banger-sh/banger/internal/network"
	"github.com/banger-sh/banger/internal/template"
	"github.com/banger-sh/banger/internal/vmm"
)

// Spares. After a restore, a warm create still pays for the guest running
// its identity step and its first exec for the first time in a new VMM
// process: under TCG every guest code path is translated on first use, and
// those two cost ~150 ms here, more than the restore itself. A spare is a
// clone restored ahead of demand whose identity step and an exec were
// rehearsed with throw-away values; it then idles (the agent blocks: ~0%
// CPU) until a create of its shape takes it, and that create only applies
// the real identity: RNG seed, clock, hostname, machine-id, MAC and address
// are the VM's own before it is ready, exactly as for any clone.
//
// A spare is not a VM: it has no store row and no lease. It holds a pool
// tap and the files of the VM id it will serve as (so that taking it moves
// nothing). At most Options.Spares exist, for the shapes used most
// recently; one is made after each warm create and after each template
// build, in the background. Daemon stop kills them; after a daemon crash
// Reconcile removes their processes, files and taps as orphans.
type spare struct {
	id, key string
	net     bool          // holds a tap: serves VMs with a NIC
	made    chan struct{} // closed once made (or failed: err set)
	err     error
	h       vmm.Handle
	c       *agent.Client
	tap     string // the tap, until a lease takes it
	since   time.Time
	created time.Time // the template's, to tell a rebuilt one apart
	// holdsWorkspace: a create copied its workspace into the slot.
	holdsWorkspace bool
	// claimed is set by a create that waits for this spare: its maker
	// then skips what it has not started of the rehearsal (the create
	// would wait for it, and does the same work for real right after).
	claimed atomic.Bool
}

// spareFits reports whether a create can take a spare: warm starts on,
// spares on, and a workspace disk (if any) the size of the slot.
func (m *Manager) spareFits(req api.CreateVMRequest, net bool) bool {
	if req.Cold || m.opts.Spares <= 0 || m.opts.Templates == nil || !m.opts.Templates.Supported() {
		return false
	}
	if net && m.net == nil {
		return false
	}
	if ws := req.Workspace; ws != nil && ws.Disk != "" {
		st, err := os.Stat(ws.Disk)
		if err != nil || st.Size() != api.WorkSlotBytes {
			return false
		}
	}
	return true
}

// takeSpare hands out the spare of a template key (waiting for it when it
// is being made), or nil.
func (m *Manager) takeSpare(ctx context.Context, key string, net bool) *spare {
	t, ok := m.opts.Templates.Lookup(key)
	if !ok {
		// Gone or damaged since the spare was made: the create goes the
		// usual way (and warns); the spare goes.
		m.DropSpare(key)
		return nil
	}
	m.mu.Lock()
	s := m.spares[key]
	if s == nil || s.net != net {
		m.mu.Unlock()
		return nil
	}
	delete(m.spares, key)
	m.mu.Unlock()
	s.claimed.Store(true)
	select {
	case <-s.made:
	case <-ctx.Done():
		m.retireSpare(s)
		return nil
	}
	if s.err != nil {
		return nil // its maker cleaned up
	}
	if !s.created.Equal(t.Created) {
		// The template was rebuilt under the same key meanwhile: the
		// spare's memory belongs to the old root disk.
		m.retireSpare(s)
		return nil
	}
	if m.backend.Status(ctx, s.h) != vmm.StateRunning {
		m.log.Warn("spare clone died while idle: restoring on demand", "id", s.id)
		m.retireSpare(s)
		return nil
	}
	return s
}

// fillSpare makes a spare of the template of sh in the background unless
// one exists; the least recently made other spare goes when the limit is
// reached.
func (m *Manager) fillSpare(sh template.Shape, man *image.Manifest) {
	key := sh.Key()
	if m.opts.Spares <= 0 || m.opts.Templates == nil || key == "" {
		return
	}
	m.mu.Lock()
	select {
	case <-m.closing:
		m.mu.Unlock()
		return
	default:
	}
	if m.spares[key] != nil {
		m.mu.Unlock()
		return
	}
	var evicted []*spare
	for len(m.spares) >= m.opts.Spares {
		var oldest *spare
		for _, s := range m.spares {
			if oldest == nil || s.since.Before(oldest.since) {
				oldest = s
			}
		}
		delete(m.spares, oldest.key)
		evicted = append(evicted, oldest)
	}
	s := &spare{id: newID(), key: key, net: m.net != nil, made: make(chan struct{}), since: time.Now()}
	m.spares[key] = s
	m.wg.Add(1)
	m.mu.Unlock()
	for _, e := range evicted {
		m.retireSpare(e)
	}
	go func() {
		defer m.wg.Done()
		start := time.Now()
		s.err = m.makeSpare(m.bgCtx, s, sh, man)
		close(s.made)
		if s.err != nil {
			m.mu.Lock()
			if m.spares[key] == s {
				delete(m.spares, key)
			}
			m.mu.Unlock()
			if !errors.Is(s.err, context.Canceled) {
				m.log.Warn("spare clone not made", "template", key, "err", s.err)
			}
			return
		}
		m.log.Info("spare clone ready", "template", key, "id", s.id, "took", time.Since(start).String())
	}()
}

// makeSpare restores a clone of the template as s and rehearses its
// identity step and an exec. On failure it undoes everything.
func (m *Manager) makeSpare(ctx context.Context, s *spare, sh template.Shape, man *image.Manifest) (err error) {
	t, ok := m.opts.Templates.Lookup(s.key)
	if !ok {
		return fmt.Errorf("template %s is gone", s.key)
	}
	s.created = t.Created
	initrd, err := m.initrd(man)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			m.destroySpare(s, false)
		}
	}()
	id := s.id
	if err := os.MkdirAll(m.layout.VMDir(id), 0o755); err != nil {
		return err
	}
	root, err := t.CloneRoot(ctx, m.layout.VMRootStem(id))
	if err != nil {
		return err
	}
	crashpoint.Hit("spare.disk")
	slot := m.layout.VMWorkDisk(id)
	if err := sparse(slot, api.WorkSlotBytes); err != nil {
		return err
	}
	nics := []vmm.NIC{{MAC: network.MACFor(id)}} // the slot, with no host side
	var netcfg *agent.NetConfig
	if s.net {
		if s.tap, err = m.net.AcquireTap(ctx); err != nil {
			return err
		}
		crashpoint.Hit("spare.tap")
		nics = []vmm.NIC{{Tap: s.tap, MAC: network.MACFor(id)}}
		// Throw-away values on the same code paths as a VM's (TEST-NET-1;
		// a MAC of its own, as nothing may be shared between clones).
		netcfg = &agent.NetConfig{Interface: "eth0", MAC: "02:00:" + s.id[0:2] + ":" + s.id[2:4] + ":" + s.id[4:6] + ":" + s.id[6:8], Address: "192.0.2.2/24", Gateway: "192.0.2.1",
			DNS: []string{"192.0.2.1"}, SearchDomain: "invalid", Hosts: []string{"192.0.2.2 spare.invalid spare"}}
	}
	rt := m.layout.VMRuntimeDir(id)
	if err := os.MkdirAll(rt, 0o700); err != nil {
		return err
	}
	src := m.templateSource(man, initrd)
	s.h, err = m.backend.Start(ctx, m.vmSpec(id, sh.VCPUs, sh.MemoryMiB, src, root, []vmm.Disk{{Path: slot, Format: disk.FormatRaw}}, nics, t))
	if err != nil {
		return err
	}
	crashpoint.Hit("spare.vmm")
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	gc, err := template.Identity("spare-"+id, netcfg, m.opts.AuthorizedKeys)
	if err != nil {
		return err
	}
	conn, err := m.backend.DialAgent(cctx, s.h)
	if err != nil {
		return err
	}
	if s.c, err = agent.Dial(cctx, conn); err != nil {
		return err
	}
	if s.claimed.Load() {
		return nil
	}
	if err := s.c.Configure(cctx, gc); err != nil {
		return fmt.Errorf("rehearse identity: %w", err)
	}
	if s.claimed.Load() {
		return nil
	}
	p, err := s.c.Exec(cctx, agent.ExecRequest{Argv: []string{"true"}, Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: io.Discard})
	if err != nil {
		return fmt.Errorf("rehearse exec: %w", err)
	}
	st, err := p.Wait()
	if err != nil {
		return fmt.Errorf("rehearse exec: %w", err)
	}
	if st.Code != 0 {
		return fmt.Errorf("rehearse exec: true exited %d", st.Code)
	}
	return nil
}

// adoptSpare turns a taken spare into r (whose id is the spare's): its
// lease on the spare's tap, then its own identity. On failure the caller
// destroys the spare (keeping the VM's files) and restores on demand.
func (m *Manager) adoptSpare(ctx context.Context, r *record, man *image.Manifest, s *spare, progress Progress, u *undo) error {
	start := time.Now()
	id := r.row.ID
	progress.Phase("restore", "warm start from a ready clone of template "+s.key[:12])
	var netcfg *agent.NetConfig
	if s.net {
		tap := s.tap
		s.tap = "" // the lease's now, or released by AttachTap on failure
		l, err := m.net.AttachTap(ctx, id, network.Egress(r.spec.Net), tap)
		if err != nil {
			return fmt.Errorf("network: %w", err)
		}
		u.push(func(ctx context.Context) { m.net.Detach(ctx, id) })
		netcfg = m.netConfig(r, l)
	}
	_, mounts := m.workDisks(r)
	gc, err := template.Identity(r.row.Name, netcfg, m.opts.AuthorizedKeys)
	if err != nil {
		return err
	}
	gc.Mounts = mounts
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := s.c.Configure(cctx, gc); err != nil {
		return fmt.Errorf("configure clone identity: %w", err)
	}
	m.mu.Lock()
	m.agents[id] = &agentConn{client: s.c}
	m.mu.Unlock()
	h := s.h
	u.push(func(ctx context.Context) {
		m.dropAgent(id)
		m.backend.Kill(ctx, h)
		os.RemoveAll(m.layout.VMRuntimeDir(id))
	})
	return m.cloneRunning(ctx, r, h, s.key, start, progress)
}

// retireSpare destroys a spare once it is made (in the background).
func (m *Manager) retireSpare(s *spare) {
	m.background(func() {
		<-s.made
		if s.err == nil {
			m.destroySpare(s, false)
		}
	})
}

// returnSpare puts back a spare a create took but did not change (its
// row could not be inserted), unless another took its place.
func (m *Manager) returnSpare(s *spare) {
	m.mu.Lock()
	closing := false
	select {
	case <-m.closing:
		closing = true
	default:
	}
	if !closing && m.spares[s.key] == nil {
		m.spares[s.key] = s
		m.mu.Unlock()
		return
	}
	m.mu.Unlock()
	m.retireSpare(s)
}

// background runs f in a goroutine that Close waits for; once Close has
// begun, f runs now, in the caller (a WaitGroup must not grow while it is
// waited for).
func (m *Manager) background(f func()) {
	m.mu.Lock()
	select {
	case <-m.closing:
		m.mu.Unlock()
		f()
		return
	default:
	}
	m.wg.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		f()
	}()
}

// destroySpare kills a spare and removes what it holds. vmOwnsFiles: a
// create that took the spare and failed to adopt it goes on with the VM's
// directory: only the spare's root disk and its empty slot go (a slot
// holding the VM's workspace stays, as the VM's work disk).
func (m *Manager) destroySpare(s *spare, vmOwnsFiles bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if s.c != nil {
		s.c.Close()
		s.c = nil
	}
	if s.h.PID != 0 {
		if err := m.backend.Kill(ctx, s.h); err != nil {
			m.log.Warn("spare clone: kill", "id", s.id, "err", err)
		}
		s.h = vmm.Handle{}
	}
	if s.tap != "" {
		m.net.ReleaseTap(ctx, s.tap)
		s.tap = ""
	}
	os.RemoveAll(m.layout.VMRuntimeDir(s.id))
	if vmOwnsFiles {
		m.removeRoot(s.id)
		if !s.holdsWorkspace {
			os.Remove(m.layout.VMWorkDisk(s.id))
		}
		return
	}
	os.RemoveAll(m.layout.VMDir(s.id))
}

// closeSpares destroys every spare (daemon stop).
func (m *Manager) closeSpares() {
	m.mu.Lock()
	var all []*spare
	for k, s := range m.spares {
		delete(m.spares, k)
		all = append(all, s)
	}
	m.mu.Unlock()
	for _, s := range all {
		m.retireSpare(s) // closing: destroyed now, in this goroutine
	}
}

// fillSlot copies a work disk image into a spare's slot file, whose inode
// the spare's VMM holds open: only src's data extents are written (the
// slot is sparse and all zeros), with copy_file_range.
func fillSlot(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer out.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if err := disk.CopyData(in, out, st.Size()); err != nil {
		return fmt.Errorf("copy work disk: %w", err)
	}
	return nil
}

// SpareState says whether a template has a spare clone: "ready",
// "making" or "".
func (m *Manager) SpareState(key string) string {
	m.mu.Lock()
	s := m.spares[key]
	m.mu.Unlock()
	if s == nil {
		return ""
	}
	select {
	case <-s.made:
		if s.err != nil {
			return ""
		}
		return "ready"
	default:
		return "making"
	}
}

// DropSpare destroys the spare clone of a template (removed or pruned).
func (m *Manager) DropSpare(key string) {
	m.mu.Lock()
	s := m.spares[key]
	delete(m.spares, key)
	m.mu.Unlock()
	if s != nil {
		m.retireSpare(s)
	}
}
