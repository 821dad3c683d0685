package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/crashpoint"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/image"
	"github.com/banger-sh/banger/internal/vmm"
)

// DeleteOptions tune Delete.
type DeleteOptions struct {
	Force bool // delete a running VM (killing it)
}

// Delete removes a VM and everything it owns. With Force the VMM is
// killed first, before the VM's lock is taken: an operation holding the
// lock may be waiting on a guest that never answers, and the kill ends
// that wait (the guest's session breaks), so the lock comes free.
func (m *Manager) Delete(ctx context.Context, name string, o DeleteOptions) error {
	killed := false
	if o.Force {
		if r, err := m.get(ctx, name); err == nil && r.handle.PID != 0 {
			m.stopWatch(r.row.ID) // its exit is this delete's, not news
			m.dropAgent(r.row.ID)
			kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			if err := m.backend.Kill(kctx, r.handle); err != nil {
				m.log.Warn("delete: kill before taking the lock", "vm", r.row.Name, "err", err)
			} else {
				killed = true
			}
			cancel()
		}
	}
	r, unlock, err := m.acquire(ctx, name)
	if killed && errors.Is(err, errdefs.ErrNotFound) {
		return nil // its create failed once the VMM was gone: deleted all the same
	}
	if err != nil {
		return err
	}
	defer unlock()
	state := m.derive(ctx, r)
	if !o.Force {
		if state == StateCreating || state == StateUnknown {
			return errdefs.Conflict(fmt.Sprintf("vm %s is %s: delete it with --force", r.row.Name, state))
		}
		if err := m.checkExported(ctx, r, state); err != nil {
			return err
		}
	}
	r.row.State = StateDeleting
	if err := r.save(ctx, m.store); err != nil {
		return err
	}
	crashpoint.Hit("delete.marked")
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	m.stopWatch(r.row.ID)
	if r.handle.PID != 0 { // first: nothing waits on the guest
		if err := m.backend.Kill(dctx, r.handle); err != nil {
			r.row.State, r.row.LastError = StateError, "delete: "+err.Error()
			r.save(dctx, m.store)
			return fmt.Errorf("delete vm %s: stop VMM: %w", r.row.Name, err)
		}
	}
	crashpoint.Hit("delete.killed")
	m.dropAgent(r.row.ID)
	m.closeForwards(r.row.ID)
	os.RemoveAll(m.layout.VMRuntimeDir(r.row.ID))
	m.dropShadow(r.row.ID)
	if err := os.RemoveAll(m.layout.VMDir(r.row.ID)); err != nil {
		return fmt.Errorf("delete vm %s: %w", r.row.Name, err)
	}
	crashpoint.Hit("delete.files")
	if err := m.store.DeleteVM(dctx, r.row.ID); err != nil {
		return err
	}
	crashpoint.Hit("delete.row")
	// The network goes in the background: the VMM is gone, so its tap
	// carries nothing, and deleting a tap waits ~25 ms for the kernel
	// (RCU), a fifth of a warm `vm run --rm`. Until then its address stays
	// leased (never handed out twice); Close waits for it, and after a
	// crash Reconcile removes what no VM owns.
	id := r.row.ID
	m.background(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		m.detachNet(ctx, id)
	})
	m.forgetLock(r.row.ID)
	m.log.Info("vm deleted", "vm", r.row.Name, "id", r.row.ID)
	return nil
}

// checkExported refuses to delete a workspace holding edits that were
// never exported. A stopped VM is booted to look (its disk is the truth).
func (m *Manager) checkExported(ctx context.Context, r *record, state string) (err error) {
	if r.spec.Workspace == nil {
		return nil
	}
	if state != StateRunning {
		defer func() {
			if err != nil && r.handle.PID != 0 { // refused: back to stopped, as it was
				m.stopWatch(r.row.ID)
				m.dropAgent(r.row.ID)
				m.backend.Kill(context.WithoutCancel(ctx), r.handle)
				m.markStopped(context.WithoutCancel(ctx), r, "")
			}
		}()
		img, err := m.store.GetImage(ctx, r.row.ImageID)
		if err != nil {
			return err
		}
		man, err := image.Load(img.Dir)
		if err != nil {
			return err
		}
		var u undo
		if err := m.boot(ctx, r, man, nil, &u, false); err != nil {
			u.run()
			return fmt.Errorf("vm %s: boot to check its workspace for unexported edits: %w (delete with --force to skip the check)", r.row.Name, err)
		}
	}
	files, err := m.unexported(ctx, r)
	if err != nil {
		return fmt.Errorf("vm %s: check its workspace for unexported edits: %w (delete with --force to skip the check)", r.row.Name, err)
	}
	if len(files) > 0 {
		shown := files
		if len(shown) > 10 {
			shown = append(shown[:10:10], fmt.Sprintf("... (%d files)", len(files)))
		}
		return errdefs.Conflict(fmt.Sprintf("vm %s has unexported workspace edits: %s; export them ('banger workspace export %s') or delete with --force",
			r.row.Name, strings.Join(shown, ", "), r.row.Name))
	}
	return nil
}

// StopOptions tune Stop.
type StopOptions struct {
	Force   bool          // skip the clean power-off
	Timeout time.Duration // how long a clean power-off may take
}

// Stop powers a VM off: cleanly through its agent (sync, remount / read-only,
// power off), then by force when that does not finish within the timeout.
func (m *Manager) Stop(ctx context.Context, name string, o StopOptions) (api.VM, error) {
	r, unlock, err := m.acquire(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	if st := m.derive(ctx, r); st != StateRunning && st != StateUnknown {
		if st == StateStopped && r.row.State != StateStopped {
			m.markStopped(ctx, r, "")
		}
		return m.toAPI(ctx, r), nil
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	m.stopWatch(r.row.ID)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.Timeout+15*time.Second)
	defer cancel()
	clean := false
	if !o.Force {
		actx, acancel := context.WithTimeout(sctx, o.Timeout)
		if c, err := m.agent(actx, r); err == nil {
			if err := c.Shutdown(actx); err == nil {
				clean = m.backend.WaitExit(actx, r.handle) == nil
			} else {
				m.log.Warn("clean shutdown failed", "vm", r.row.Name, "err", err)
			}
		}
		acancel()
	}
	m.dropAgent(r.row.ID)
	if !clean {
		if err := m.backend.Kill(sctx, r.handle); err != nil {
			m.startWatch(r) // still running: keep noticing its exit
			return api.VM{}, fmt.Errorf("stop vm %s: %w", r.row.Name, err)
		}
	}
	m.markStopped(sctx, r, "")
	m.log.Info("vm stopped", "vm", r.row.Name, "clean", clean)
	return m.toAPI(ctx, r), nil
}

func (m *Manager) markStopped(ctx context.Context, r *record, reason string) {
	m.closeForwards(r.row.ID)
	os.RemoveAll(m.layout.VMRuntimeDir(r.row.ID))
	r.row.State = StateStopped
	if reason != "" {
		r.row.State = StateError
	}
	r.row.LastError = reason
	r.handle = vmm.Handle{}
	if err := r.save(ctx, m.store); err != nil {
		m.log.Warn("mark stopped", "vm", r.row.Name, "err", err)
	}
}

// Start boots a stopped VM on its existing root disk.
func (m *Manager) Start(ctx context.Context, name string, progress Progress) (api.VM, error) {
	r, unlock, err := m.acquire(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	switch st := m.derive(ctx, r); st {
	case StateRunning:
		return m.toAPI(ctx, r), nil
	case StateStopped, StateError:
	default:
		return api.VM{}, errdefs.Conflict(fmt.Sprintf("vm %s is %s", r.row.Name, st))
	}
	img, err := m.store.GetImage(ctx, r.row.ImageID)
	if err != nil {
		return api.VM{}, fmt.Errorf("vm %s: its image: %w", r.row.Name, err)
	}
	man, err := image.Load(img.Dir)
	if err != nil {
		return api.VM{}, fmt.Errorf("vm %s: image %s: %w", r.row.Name, img.Name, err)
	}
	var u undo
	if err := m.boot(ctx, r, man, progress, &u, false); err != nil {
		u.run()
		m.markStopped(context.WithoutCancel(ctx), r, "start: "+err.Error())
		return api.VM{}, err
	}
	return m.toAPI(ctx, r), nil
}

// SetOptions change a VM: the shape of a stopped VM, the egress of any;
// zero fields are left alone.
type SetOptions struct {
	VCPUs     int
	MemoryMiB int
	Net       string // egress: nat, none or shared
}

// Set changes a stopped VM's vCPUs or memory, which take effect at start,
// and a VM's egress, at once (running or not: see setEgress).
func (m *Manager) Set(ctx context.Context, name string, o SetOptions) (api.VM, error) {
	r, unlock, err := m.acquire(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	if o.VCPUs != 0 || o.MemoryMiB != 0 {
		if st := m.derive(ctx, r); st != StateStopped && st != StateError {
			return api.VM{}, errdefs.Conflict(fmt.Sprintf("vm %s is %s: stop it first ('banger vm stop %s'); vCPUs and memory change only on a stopped VM", r.row.Name, st, r.row.Name))
		}
	}
	s := r.spec
	if o.VCPUs != 0 {
		s.VCPUs = o.VCPUs
	}
	if o.MemoryMiB != 0 {
		s.MemoryMiB = o.MemoryMiB
	}
	if err := checkShape(s.VCPUs, s.MemoryMiB); err != nil {
		return api.VM{}, err
	}
	oldNet := s.Net
	if o.Net != "" && o.Net != s.Net {
		if err := m.setEgress(ctx, r, o.Net); err != nil {
			return api.VM{}, err
		}
		s.Net = o.Net
	}
	r.spec = s
	if err := r.save(ctx, m.store); err != nil {
		if s.Net != oldNet {
			m.setEgress(context.WithoutCancel(ctx), r, oldNet)
		}
		return api.VM{}, err
	}
	return m.toAPI(ctx, r), nil
}

// startWatch notices a VMM that exits on its own (guest power-off, crash,
// OOM kill) and records the VM as stopped, or error with the reason.
func (m *Manager) startWatch(r *record) {
	id, h, name := r.row.ID, r.handle, r.row.Name
	// Only what the logs gain from now on says why this VMM ended: the
	// console log holds every earlier boot too (a kill -9 after a clean
	// stop/start must not read the last boot's "Power down").
	conOff, vmmOff := fileSize(m.layout.VMConsoleLog(id)), fileSize(m.layout.VMVMMLog(id))
	ctx, cancel := context.WithCancel(context.Background())
	m.mu.Lock()
	if old := m.watch[id]; old != nil {
		old()
	}
	m.watch[id] = cancel
	m.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		if err := m.backend.WaitExit(ctx, h); err != nil {
			return // cancelled: someone else owns the VM's fate now
		}
		select {
		case <-m.closing:
			return
		default:
		}
		unlock := m.lock(id)
		defer unlock()
		cur, err := m.get(context.Background(), id)
		if err != nil || cur.handle.PID != h.PID || cur.handle.StartTime != h.StartTime || cur.row.State != StateRunning {
			return
		}
		m.dropAgent(id)
		reason := exitReason(m.backend, m.layout.VMConsoleLog(id), m.layout.VMVMMLog(id), conOff, vmmOff)
		m.markStopped(context.Background(), cur, reason)
		m.log.Info("vmm exited on its own", "vm", name, "reason", reason)
	}()
}

func (m *Manager) stopWatch(id string) {
	m.mu.Lock()
	if c := m.watch[id]; c != nil {
		c()
		delete(m.watch, id)
	}
	m.mu.Unlock()
}

// exitReason reads why a VMM ended from what its logs gained after the
// given offsets (their sizes when the VMM was last known to run; -1 when
// unknown: then only the last boot's part of each log is read): "" for a
// clean guest power-off, else a short reason. The guest's console is read
// here; the VMM's own log is the backend's to read (vmm.Backend.ExitReason).
func exitReason(b vmm.Backend, consoleLog, vmmLog string, conOff, vmmOff int64) string {
	if conOff > fileSize(consoleLog) {
		conOff = -1 // trimmed since (see consolelog): the last boot's part
	}
	con := readFrom(consoleLog, conOff, 4096)
	if conOff < 0 {
		con = lastBoot(con)
	}
	c := string(con)
	vl := strings.TrimSpace(b.ExitReason(readFrom(vmmLog, vmmOff, 8192)))
	switch {
	case strings.Contains(c, "Kernel panic"):
		i := strings.LastIndex(c, "Kernel panic")
		return "guest kernel panic: " + firstLine(c[i:])
	case strings.Contains(c, "Out of memory"):
		return "guest ran out of memory"
	case strings.Contains(c, "banger-agent: power off") || strings.Contains(c, "reboot: Power down"):
		return ""
	case vl != "":
		return "VMM exited: " + firstLine(vl)
	}
	return "VMM exited unexpectedly (killed?)"
}

// readFrom returns a file's bytes after off (at most the last max of
// them); off < 0 means its last max bytes.
func readFrom(path string, off, max int64) []byte {
	b, err := readTail(path, max)
	if err != nil {
		return nil
	}
	size := fileSize(path)
	if off >= 0 && size >= 0 {
		if n := size - off; n < int64(len(b)) {
			if n <= 0 {
				return nil
			}
			b = b[int64(len(b))-n:]
		}
	}
	return b
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// lastBoot returns the part of a console log written by the last boot:
// from the last line whose kernel timestamp ("[    0.266265] ...") is
// smaller than the one before it.
func lastBoot(con []byte) []byte {
	start, prev := 0, -1.0
	for off := 0; off < len(con); {
		line := con[off:]
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			line = line[:i+1]
		}
		if ts, ok := kernelTime(line); ok {
			if ts < prev {
				start = off
			}
			prev = ts
		}
		off += len(line)
	}
	return con[start:]
}

func kernelTime(line []byte) (float64, bool) {
	if len(line) < 3 || line[0] != '[' {
		return 0, false
	}
	end := bytes.IndexByte(line, ']')
	if end < 0 {
		return 0, false
	}
	ts, err := strconv.ParseFloat(strings.TrimSpace(string(line[1:end])), 64)
	return ts, err == nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return strings.TrimSpace(s)
}

// Reconcile makes the store agree with the world. It runs at daemon start,
// before anything is served:
//   - a VM caught mid-create or mid-delete by a crash is removed entirely
//     (a create either completes or leaves nothing);
//   - a VM recorded as running whose VMM is alive is re-attached (its exit
//     watcher restarts); one whose VMM is gone becomes stopped and its
//     runtime files are freed;
//   - VM directories, runtime directories and VMM processes under this
//     banger's directories that no VM owns are removed.
func (m *Manager) Reconcile(ctx context.Context) error {
	rows, err := m.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	owned := map[string]bool{}
	unreadable := map[string]bool{}
	livePID := map[string]int{} // re-attached VM id → its VMM's pid
	var reattached []*record
	for _, row := range rows {
		r, err := load(row)
		if err != nil {
			m.log.Warn("reconcile: unreadable vm row", "vm", row.Name, "err", err)
			owned[row.ID], unreadable[row.ID] = true, true
			continue
		}
		switch row.State {
		case StateCreating, StateDeleting:
			m.log.Info("reconcile: removing vm left mid-operation", "vm", row.Name, "state", row.State)
			if r.handle.PID != 0 {
				m.backend.Kill(ctx, r.handle)
			}
			os.RemoveAll(m.layout.VMRuntimeDir(row.ID))
			os.RemoveAll(m.layout.VMDir(row.ID))
			m.store.DeleteVM(ctx, row.ID)
			continue // its lease, if any, goes with the network reconcile below
		case StateRunning, StateUnknown:
			owned[row.ID] = true
			if m.backend.Status(ctx, r.handle) == vmm.StateExited {
				m.log.Info("reconcile: vm's VMM is gone", "vm", row.Name, "pid", r.handle.PID)
				m.markStopped(ctx, r, exitReason(m.backend, m.layout.VMConsoleLog(row.ID), m.layout.VMVMMLog(row.ID), -1, -1))
			} else {
				m.log.Info("reconcile: re-attached", "vm", row.Name, "pid", r.handle.PID)
				m.startWatch(r)
				reattached = append(reattached, r)
				livePID[row.ID] = r.handle.PID
			}
		default:
			owned[row.ID] = true
			// A stopped VM keeps no handle (markStopped clears it): one
			// that has a live VMM was caught mid-start (the handle is
			// saved before the guest is ready) or mid-delete. A start
			// either completes or leaves the VM stopped, so that VMM
			// goes; left running, it would hold the root disk (and its
			// sockets would be removed just below).
			if r.handle.PID != 0 && m.backend.Status(ctx, r.handle) != vmm.StateExited {
				m.log.Info("reconcile: killing the VMM of a vm caught mid-start", "vm", row.Name, "state", row.State, "pid", r.handle.PID)
				if err := m.backend.Kill(ctx, r.handle); err != nil {
					m.log.Warn("reconcile: kill", "vm", row.Name, "err", err)
				}
				m.markStopped(ctx, r, "interrupted: the daemon stopped during a start (or delete) of this VM; its VMM was killed")
			}
			os.RemoveAll(m.layout.VMRuntimeDir(row.ID))
		}
	}
	// Orphans: directories and processes no row owns.
	for _, dir := range []string{m.layout.VMsDir(), filepath.Dir(m.layout.VMRuntimeDir("x"))} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if !owned[e.Name()] {
				m.log.Info("reconcile: removing orphan", "path", filepath.Join(dir, e.Name()))
				os.RemoveAll(filepath.Join(dir, e.Name()))
			}
		}
	}
	// Every VMM of this banger's runtime dir is killed unless it is the
	// recorded VMM of a re-attached VM (or belongs to an unreadable row):
	// that covers VMs no row owns, a VMM started but not yet recorded when
	// the daemon died, and a second VMM of one VM.
	for _, o := range m.backend.FindProcesses(filepath.Dir(m.layout.VMRuntimeDir("x"))) {
		if livePID[o.ID] != o.PID && !unreadable[o.ID] {
			m.log.Info("reconcile: killing orphan VMM", "pid", o.PID, "id", o.ID, "owned", owned[o.ID])
			syscall.Kill(o.PID, syscall.SIGKILL)
		}
	}
	// A template VM never outlives its build, and no build runs before
	// reconcile: one still running was left by a daemon killed mid-build.
	tplRoot := filepath.Dir(m.layout.TemplateRuntimeDir("x"))
	for _, o := range m.backend.FindProcesses(tplRoot) {
		m.log.Info("reconcile: killing the VMM of an interrupted template build", "pid", o.PID, "id", o.ID)
		syscall.Kill(o.PID, syscall.SIGKILL)
	}
	os.RemoveAll(tplRoot)
	if m.net != nil {
		ids := make([]string, 0, len(owned))
		for id := range owned {
			ids = append(ids, id)
		}
		if err := m.net.Reconcile(ctx, ids); err != nil {
			m.log.Warn("reconcile network", "err", err)
		}
		// Forwards live in the daemon: bring back those of running VMs.
		for _, r := range reattached {
			if err := m.openForwards(ctx, r); err != nil {
				m.log.Warn("reconcile: reopen forwards", "vm", r.row.Name, "err", err)
			}
		}
	}
	return nil
}
