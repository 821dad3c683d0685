package warm

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
	"github.com/banger-sh/banger/internal/network"
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
// build, in the background. Close kills them; after a daemon crash the VM
// manager's reconcile removes their processes, files and taps as orphans.
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

// takeSpare hands out the spare of a template key (waiting for it when it
// is being made), or nil.
func (p *Pool) takeSpare(ctx context.Context, key string, net bool) *spare {
	t, ok := p.store.Lookup(key)
	if !ok {
		// Gone or damaged since the spare was made: the create goes the
		// usual way (and warns); the spare goes.
		p.DropSpare(key)
		return nil
	}
	p.mu.Lock()
	s := p.spares[key]
	if s == nil || s.net != net {
		p.mu.Unlock()
		return nil
	}
	delete(p.spares, key)
	p.mu.Unlock()
	s.claimed.Store(true)
	select {
	case <-s.made:
	case <-ctx.Done():
		p.retireSpare(s)
		return nil
	}
	if s.err != nil {
		return nil // its maker cleaned up
	}
	if !s.created.Equal(t.Created) {
		// The template was rebuilt under the same key meanwhile: the
		// spare's memory belongs to the old root disk.
		p.retireSpare(s)
		return nil
	}
	if p.b.Status(ctx, s.h) != vmm.StateRunning {
		p.log.Warn("spare clone died while idle: restoring on demand", "id", s.id)
		p.retireSpare(s)
		return nil
	}
	return s
}

// fillSpare makes a spare of the template of sh in the background unless
// one exists; the least recently made other spare goes when the limit is
// reached.
func (p *Pool) fillSpare(sh Shape, src Source) {
	if p.o.Spares <= 0 || !p.Supported() || sh.Backend == "" {
		return
	}
	key := sh.Key()
	p.mu.Lock()
	select {
	case <-p.closing:
		p.mu.Unlock()
		return
	default:
	}
	if p.spares[key] != nil {
		p.mu.Unlock()
		return
	}
	var evicted []*spare
	for len(p.spares) >= p.o.Spares {
		var oldest *spare
		for _, s := range p.spares {
			if oldest == nil || s.since.Before(oldest.since) {
				oldest = s
			}
		}
		delete(p.spares, oldest.key)
		evicted = append(evicted, oldest)
	}
	s := &spare{id: p.o.NewID(), key: key, net: p.o.Taps != nil, made: make(chan struct{}), since: time.Now()}
	p.spares[key] = s
	p.wg.Add(1)
	p.mu.Unlock()
	for _, e := range evicted {
		p.retireSpare(e)
	}
	go func() {
		defer p.wg.Done()
		start := time.Now()
		s.err = p.makeSpare(p.bgCtx, s, sh, src)
		close(s.made)
		if s.err != nil {
			p.mu.Lock()
			if p.spares[key] == s {
				delete(p.spares, key)
			}
			p.mu.Unlock()
			if !errors.Is(s.err, context.Canceled) {
				p.log.Warn("spare clone not made", "template", key, "err", s.err)
			}
			return
		}
		p.log.Info("spare clone ready", "template", key, "id", s.id, "took", time.Since(start).String())
	}()
}

// makeSpare restores a clone of the template as s and rehearses its
// identity step and an exec. On failure it undoes everything.
func (p *Pool) makeSpare(ctx context.Context, s *spare, sh Shape, src Source) (err error) {
	t, ok := p.store.Lookup(s.key)
	if !ok {
		return fmt.Errorf("template %s is gone", s.key)
	}
	s.created = t.Created
	defer func() {
		if err != nil {
			p.destroySpare(s, false)
		}
	}()
	id := s.id
	if err := os.MkdirAll(p.l.VMDir(id), 0o755); err != nil {
		return err
	}
	root, err := t.CloneRoot(ctx, p.l.VMRootStem(id))
	if err != nil {
		return err
	}
	crashpoint.Hit("spare.disk")
	slot := p.l.VMWorkDisk(id)
	if err := disk.Sparse(slot, api.WorkSlotBytes); err != nil {
		return err
	}
	nics := []vmm.NIC{{MAC: network.MACFor(id)}} // the slot, with no host side
	var netcfg *agent.NetConfig
	if s.net {
		if s.tap, err = p.o.Taps.AcquireTap(ctx); err != nil {
			return err
		}
		crashpoint.Hit("spare.tap")
		nics = []vmm.NIC{{Tap: s.tap, MAC: network.MACFor(id)}}
		// Throw-away values on the same code paths as a VM's (TEST-NET-1;
		// a MAC of its own, as nothing may be shared between clones).
		netcfg = &agent.NetConfig{Interface: "eth0", MAC: "02:00:" + s.id[0:2] + ":" + s.id[2:4] + ":" + s.id[4:6] + ":" + s.id[6:8], Address: "192.0.2.2/24", Gateway: "192.0.2.1",
			DNS: []string{"192.0.2.1"}, SearchDomain: "invalid", Hosts: []string{"192.0.2.2 spare.invalid spare"}}
	}
	rt := p.l.VMRuntimeDir(id)
	if err := os.MkdirAll(rt, 0o700); err != nil {
		return err
	}
	s.h, err = p.b.Start(ctx, Spec(p.l, id, sh.VCPUs, sh.MemoryMiB, src, root, []vmm.Disk{{Path: slot, Format: disk.FormatRaw}}, nics, t))
	if err != nil {
		return err
	}
	crashpoint.Hit("spare.vmm")
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	gc, err := Identity("spare-"+id, netcfg, p.o.AuthorizedKeys)
	if err != nil {
		return err
	}
	conn, err := p.b.DialAgent(cctx, s.h)
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
	pr, err := s.c.Exec(cctx, agent.ExecRequest{Argv: []string{"true"}, Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: io.Discard})
	if err != nil {
		return fmt.Errorf("rehearse exec: %w", err)
	}
	st, err := pr.Wait()
	if err != nil {
		return fmt.Errorf("rehearse exec: %w", err)
	}
	if st.Code != 0 {
		return fmt.Errorf("rehearse exec: true exited %d", st.Code)
	}
	return nil
}

// adoptSpare makes a taken spare the VM g (whose id is the spare's): its
// lease on the spare's tap, then its own identity. On failure the caller
// destroys the spare (keeping the VM's files) and restores on demand.
func (p *Pool) adoptSpare(ctx context.Context, s *spare, g Guest) (*Clone, error) {
	start := time.Now()
	g.Progress.Phase("restore", "warm start from a ready clone of template "+s.key[:12])
	var netcfg *agent.NetConfig
	if s.net {
		if g.Net == nil {
			return nil, errors.New("the spare has a NIC, the VM none")
		}
		tap := s.tap
		s.tap = "" // the lease's now, or released by the attach on failure
		var err error
		if _, netcfg, err = g.Net(ctx, tap); err != nil {
			return nil, err
		}
	}
	gc, err := p.identity(g, netcfg)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	steps, err := s.c.ConfigureSteps(cctx, gc)
	if err != nil {
		return nil, fmt.Errorf("configure clone identity: %w", err)
	}
	p.log.Debug("clone identity", "vm", g.Name, "took", time.Since(start), "steps", steps)
	cl := &Clone{Handle: s.h, Agent: s.c, Key: s.key, Spare: true, Started: start}
	s.h, s.c = vmm.Handle{}, nil // the VM's now
	return cl, nil
}

// retireSpare destroys a spare once it is made (in the background).
func (p *Pool) retireSpare(s *spare) {
	p.background(func() {
		<-s.made
		if s.err == nil {
			p.destroySpare(s, false)
		}
	})
}

// returnSpare puts back a spare a create took but did not change (its
// row could not be inserted), unless another took its place.
func (p *Pool) returnSpare(s *spare) {
	p.mu.Lock()
	closing := false
	select {
	case <-p.closing:
		closing = true
	default:
	}
	if !closing && p.spares[s.key] == nil {
		p.spares[s.key] = s
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	p.retireSpare(s)
}

// destroySpare kills a spare and removes what it holds. vmOwnsFiles: a
// create that took the spare and failed to adopt it goes on with the VM's
// directory: only the spare's root disk and its empty slot go (a slot
// holding the VM's workspace stays, as the VM's work disk).
func (p *Pool) destroySpare(s *spare, vmOwnsFiles bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if s.c != nil {
		s.c.Close()
		s.c = nil
	}
	if s.h.PID != 0 {
		if err := p.b.Kill(ctx, s.h); err != nil {
			p.log.Warn("spare clone: kill", "id", s.id, "err", err)
		}
		s.h = vmm.Handle{}
	}
	if s.tap != "" {
		p.o.Taps.ReleaseTap(ctx, s.tap)
		s.tap = ""
	}
	os.RemoveAll(p.l.VMRuntimeDir(s.id))
	if vmOwnsFiles {
		if img, ok := disk.Existing(p.l.VMRootStem(s.id)); ok {
			os.Remove(img.Path)
		}
		if !s.holdsWorkspace {
			os.Remove(p.l.VMWorkDisk(s.id))
		}
		return
	}
	os.RemoveAll(p.l.VMDir(s.id))
}

// closeSpares destroys every spare (Close).
func (p *Pool) closeSpares() {
	p.mu.Lock()
	var all []*spare
	for k, s := range p.spares {
		delete(p.spares, k)
		all = append(all, s)
	}
	p.mu.Unlock()
	for _, s := range all {
		p.retireSpare(s) // closing: destroyed now, in this goroutine
	}
}

// SpareState says whether a template has a spare clone: "ready",
// "making" or "".
func (p *Pool) SpareState(key string) string {
	if p == nil {
		return ""
	}
	p.mu.Lock()
	s := p.spares[key]
	p.mu.Unlock()
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

// SpareID is the VM id the spare of a template will serve as ("" when it
// has none).
func (p *Pool) SpareID(key string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.spares[key]; s != nil {
		return s.id
	}
	return ""
}

// DropSpare destroys the spare clone of a template (removed or pruned).
func (p *Pool) DropSpare(key string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	s := p.spares[key]
	delete(p.spares, key)
	p.mu.Unlock()
	if s != nil {
		p.retireSpare(s)
	}
}
