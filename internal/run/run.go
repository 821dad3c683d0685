// Package run is banger's main job as one daemon-owned operation: create a
// VM (its workspace shipped on a work disk), run one command in it with the
// client's stdio and signals, export the workspace's edits, keep them, and
// delete the VM. The client only watches: a run goes on to its end when the
// client goes away or is killed, and its record (exit code, output tails,
// phase durations, the patch and what was done with it) is kept in the
// store and readable afterwards (banger run show).
//
// Nothing is lost: the patch is written into the run's directory before
// the VM is deleted, on every path; an export that fails keeps the VM. A
// daemon that stops or dies mid-run leaves the run "interrupted": the next
// daemon exports and deletes what is left (Resume).
package run

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/progress"
	"github.com/banger-sh/banger/internal/store"
	"github.com/banger-sh/banger/internal/workspace"
)

// VMs is what a run needs of the VM manager.
type VMs interface {
	Create(ctx context.Context, req api.CreateVMRequest, p progress.Func) (api.VM, error)
	Exec(ctx context.Context, name string, req api.ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (Process, error)
	ExportPatch(ctx context.Context, name string, w io.Writer) error
	MarkExported(ctx context.Context, name, digest string) error
	Delete(ctx context.Context, name string, force bool) error
	// Get is the VM's state; errdefs.ErrNotFound when there is none.
	Get(ctx context.Context, name string) (api.VM, error)
}

// Process is a command running in a VM.
type Process interface {
	Wait() (agent.ExitStatus, error)
	Done() <-chan struct{}
	Signal(syscall.Signal) error
	Resize(rows, cols uint16) error
}

// Sink is where a run's stream goes while a client watches. Its methods
// may fail (the client went away): the run then goes on detached.
type Sink interface {
	Event(api.Event) error
	Stdout([]byte) error
	Stderr([]byte) error
	Exit(api.ExecExit) error
	Result(api.Run) error
}

const (
	tailBytes   = 16 << 10 // of each of stdout and stderr, kept in the record
	keepRuns    = 500      // newest runs kept; older ones are removed
	killGrace   = 10 * time.Second
	maxTimeout  = 7 * 24 * time.Hour
	closeWait   = 20 * time.Second
	exportLimit = 8 * time.Minute
)

// Options configure a Manager.
type Options struct {
	VMs    VMs
	Store  *store.Store
	Layout paths.Layout
	Log    *slog.Logger
	// Identity names what runs run on: bangerd's version, the agent's
	// digest, the VMM (for receipts).
	Identity func() (banger, agent, vmm string)
}

// Manager runs and remembers runs.
type Manager struct {
	o      Options
	mu     sync.Mutex
	live   map[string]*Live
	wg     sync.WaitGroup
	closed bool
}

// New returns a manager; call Resume once the VM manager has reconciled.
func New(o Options) *Manager {
	return &Manager{o: o, live: map[string]*Live{}}
}

// record is what the store keeps of a run.
type record struct {
	Run api.Run `json:"run"`
	// What Resume needs to finish the run: the VM and whether to export
	// and delete it.
	Export  bool     `json:"export"`
	Delete  bool     `json:"delete"`
	Detach  bool     `json:"detach,omitempty"`
	EnvKeys []string `json:"env_keys,omitempty"` // the command's extra env, names only
}

// Live is a run in progress.
type Live struct {
	m   *Manager
	id  string
	req api.RunRequest

	mu        sync.Mutex
	rec       record
	sink      Sink // nil: detached
	proc      Process
	cancel    context.CancelFunc // of the create
	stdinQ    chan []byte        // client stdin, queued until the command reads it; nil chunk: EOF
	stdinW    *io.PipeWriter
	stdout    tail
	stderr    tail
	done      chan struct{}
	hungUp    bool
	stdinGone bool // the client went away: no more stdin
	finished  bool
}

// Start validates req, records the run and starts it; sink receives its
// stream. req.VM.Workspace.Disk, when set, is the daemon's own work disk:
// the run owns it from here (the VM takes it, or it is removed).
func (m *Manager) Start(req api.RunRequest, sink Sink) (*Live, error) {
	if len(req.Exec.Argv) == 0 {
		if req.VM.Workspace != nil {
			removeWorkUploads(req.VM.Workspace)
		}
		return nil, errdefs.InvalidArgument("run: no command given")
	}
	if req.TimeoutSeconds < 0 || time.Duration(req.TimeoutSeconds)*time.Second > maxTimeout {
		if req.VM.Workspace != nil {
			removeWorkUploads(req.VM.Workspace)
		}
		return nil, errdefs.InvalidArgument(fmt.Sprintf("run: timeout %d s: want 0 (none) to %d", req.TimeoutSeconds, int(maxTimeout.Seconds())))
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		if req.VM.Workspace != nil {
			removeWorkUploads(req.VM.Workspace)
		}
		return nil, errdefs.Unavailable("bangerd is stopping")
	}
	l := &Live{m: m, id: newID(), req: req, sink: sink, done: make(chan struct{})}
	if req.Exec.Stdin {
		// Stdin may arrive (and end) while the VM is still being made.
		l.stdinQ = make(chan []byte, 64)
	}
	l.rec = record{
		Run: api.Run{
			ID: l.id, State: api.RunCreating, VM: req.VM.Name, Argv: req.Exec.Argv, Keep: req.Keep,
			CreatedAt: time.Now().UTC(), ExitCode: -1, Phases: map[string]int64{},
		},
		Export: req.VM.Workspace != nil && (!req.Keep || req.Export),
		Delete: !req.Keep,
		Detach: req.Detach,
	}
	if req.VM.Workspace != nil {
		l.rec.Run.Repo = req.VM.Workspace.Repo
	}
	for _, kv := range req.Exec.Env {
		k, _, _ := strings.Cut(kv, "=")
		l.rec.EnvKeys = append(l.rec.EnvKeys, k)
	}
	m.live[l.id] = l
	m.wg.Add(1)
	m.mu.Unlock()
	if err := l.save(); err != nil {
		m.forget(l)
		m.wg.Done()
		if req.VM.Workspace != nil {
			removeWorkUploads(req.VM.Workspace)
		}
		return nil, err
	}
	go func() {
		defer m.wg.Done()
		l.run()
	}()
	return l, nil
}

func (m *Manager) forget(l *Live) {
	m.mu.Lock()
	delete(m.live, l.id)
	m.mu.Unlock()
}

// ID is the run's id.
func (l *Live) ID() string { return l.id }

// Done is closed when the run has ended and its result is stored.
func (l *Live) Done() <-chan struct{} { return l.done }

// Stdin feeds the command's stdin (when the request asked for it). What
// comes before the command runs is queued; a full queue waits for it
// (the client's stdin is throttled, not dropped).
func (l *Live) Stdin(p []byte) {
	if l.stdinQ == nil || len(p) == 0 {
		return
	}
	select {
	case l.stdinQ <- append([]byte(nil), p...):
	case <-l.done:
	}
}

// StdinEOF closes the command's stdin (once).
func (l *Live) StdinEOF() {
	if l.stdinQ == nil {
		return
	}
	select {
	case l.stdinQ <- nil:
	case <-l.done:
	}
}

// Signal delivers sig to the command; before the command runs it cancels
// the run (the VM being created is undone).
func (l *Live) Signal(sig syscall.Signal) {
	l.mu.Lock()
	p, cancel := l.proc, l.cancel
	l.mu.Unlock()
	switch {
	case p != nil:
		p.Signal(sig)
	case cancel != nil:
		cancel()
	}
}

// Resize changes the command's terminal size.
func (l *Live) Resize(rows, cols uint16) {
	l.mu.Lock()
	p := l.proc
	l.mu.Unlock()
	if p != nil {
		p.Resize(rows, cols)
	}
}

// Detach says the client went away. Unless the run was started detached,
// the command is hung up (as ssh does) or, before it runs, the run is
// cancelled. The run goes on to its end either way.
func (l *Live) Detach() {
	l.mu.Lock()
	l.sink = nil
	detach := l.req.Detach
	p, cancel, w := l.proc, l.cancel, l.stdinW
	l.hungUp = !detach
	l.stdinGone = true
	l.mu.Unlock()
	if w != nil {
		w.CloseWithError(io.ErrUnexpectedEOF)
	}
	if detach {
		return
	}
	switch {
	case p != nil:
		p.Signal(syscall.SIGHUP)
	case cancel != nil:
		cancel()
	}
}

// emit sends to the sink; a failing sink is dropped (the run goes on).
func (l *Live) emit(f func(Sink) error) {
	l.mu.Lock()
	s := l.sink
	l.mu.Unlock()
	if s == nil {
		return
	}
	if err := f(s); err != nil {
		l.Detach()
	}
}

func (l *Live) save() error {
	l.mu.Lock()
	l.rec.Run.Stdout, l.rec.Run.Stderr = l.stdout.String(), l.stderr.String()
	b, err := json.Marshal(l.rec)
	state := l.rec.Run.State
	l.mu.Unlock()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return l.m.o.Store.PutRun(ctx, &store.Run{ID: l.id, State: state, CreatedAt: l.rec.Run.CreatedAt.Format("2006-01-02T15:04:05.000000000Z"), Record: b})
}

func (l *Live) setState(s string) {
	l.mu.Lock()
	l.rec.Run.State = s
	l.mu.Unlock()
	if err := l.save(); err != nil {
		l.m.o.Log.Warn("save run", "run", l.id, "err", err)
	}
}

func (l *Live) phase(name string, start time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rec.Run.Phases == nil {
		l.rec.Run.Phases = map[string]int64{}
	}
	l.rec.Run.Phases[name] = time.Since(start).Milliseconds()
}

func (l *Live) fail(err error) {
	l.mu.Lock()
	l.rec.Run.Error = api.ToWire(err)
	l.mu.Unlock()
}

// receipt describes what the run runs on (the exit code and patch come
// at the end).
func (l *Live) receipt(v api.VM) *api.Receipt {
	r := &api.Receipt{Image: v.Image, ImageDigest: v.ImageDigest, VCPUs: v.VCPUs, MemoryMiB: v.MemoryMiB,
		DiskBytes: v.DiskBytes, Boot: v.Boot, Net: v.Net, Argv: l.req.Exec.Argv, EnvKeys: l.rec.EnvKeys,
		Dir: l.req.Exec.Dir, ExitCode: -1}
	if l.m.o.Identity != nil {
		r.Banger, r.Agent, r.VMM = l.m.o.Identity()
	}
	if ws := l.req.VM.Workspace; ws != nil {
		b := ws.Base
		r.Base = &b
	}
	return r
}

// notify tells the client a step is done.
func (l *Live) notify(typ, vm string, p *api.RunPatch) {
	l.emit(func(s Sink) error { return s.Event(api.Event{Run: &api.RunEvent{Type: typ, VM: vm, Patch: p}}) })
}

// run is the whole operation, detached from any request.
func (l *Live) run() {
	m := l.m
	log := m.o.Log.With("run", l.id)
	start := time.Now()
	defer func() {
		l.mu.Lock()
		l.rec.Run.EndedAt = time.Now().UTC()
		l.rec.Run.Phases["total"] = time.Since(start).Milliseconds()
		l.finished = true
		run := l.rec.Run
		l.mu.Unlock()
		if err := l.save(); err != nil {
			log.Error("save run", "err", err)
		}
		run.Stdout, run.Stderr = l.stdout.String(), l.stderr.String()
		l.emit(func(s Sink) error { return s.Result(run) })
		m.forget(l)
		close(l.done)
		m.prune()
		log.Info("run ended", "state", run.State, "vm", run.VM, "exit", run.ExitCode, "dur", time.Since(start).Round(time.Millisecond).String())
	}()

	// Create. A signal, or a client that goes away, cancels it.
	cctx, cancel := context.WithCancel(context.Background())
	l.mu.Lock()
	l.cancel = cancel
	hung := l.hungUp
	l.mu.Unlock()
	if hung {
		cancel()
	}
	t0 := time.Now()
	req := l.req.VM
	v, err := m.o.VMs.Create(cctx, req, func(p api.Progress) {
		l.emit(func(s Sink) error { return s.Event(api.Event{Progress: &p}) })
	})
	if req.Workspace != nil {
		removeWorkUploads(req.Workspace) // the VM took it, or nobody will
	}
	l.phase("create", t0)
	l.mu.Lock()
	l.cancel = nil
	l.mu.Unlock()
	cancelled := cctx.Err() != nil
	cancel()
	if err != nil {
		l.fail(err)
		l.mu.Lock()
		l.rec.Run.State = api.RunFailed
		if cancelled {
			l.rec.Run.State = api.RunCancelled
		}
		l.mu.Unlock()
		return
	}
	l.mu.Lock()
	l.rec.Run.VM = v.Name
	l.rec.Run.Receipt = l.receipt(v)
	l.mu.Unlock()
	l.notify("created", v.Name, nil)
	l.setState(api.RunRunning)

	// Exec.
	t0 = time.Now()
	code, sig, timedOut, execErr := l.exec(v.Name)
	l.phase("exec", t0)
	l.mu.Lock()
	l.rec.Run.ExitCode, l.rec.Run.Signal, l.rec.Run.TimedOut = code, sig, timedOut
	l.mu.Unlock()
	if execErr != nil {
		l.fail(execErr)
	}

	// Export, then delete: the patch is kept before the VM goes.
	l.finish(v, v.Workspace != nil && l.rec.Export, l.rec.Delete, log)
}

// finish exports the VM's workspace (when asked) and deletes it (when
// asked and the export kept everything), and sets the final state.
func (l *Live) finish(v api.VM, export, del bool, log *slog.Logger) {
	m := l.m
	exported := true
	if export {
		l.setState(api.RunExporting)
		t0 := time.Now()
		p, err := m.export(l.id, v.Name)
		l.phase("export", t0)
		l.mu.Lock()
		l.rec.Run.Patch = p
		l.mu.Unlock()
		if err != nil {
			exported = false
			log.Warn("run export failed: keeping the vm", "vm", v.Name, "err", err)
			l.fail(fmt.Errorf("export the workspace of vm %s: %w; the vm is kept: export it with 'banger workspace export %s'", v.Name, err, v.Name))
		}
		if err == nil {
			l.notify("exported", v.Name, p)
		}
	}
	if del && exported {
		l.setState(api.RunDeleting)
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := m.o.VMs.Delete(ctx, v.Name, true)
		cancel()
		l.phase("delete", t0)
		if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			l.fail(fmt.Errorf("delete vm %s: %w", v.Name, err))
		} else {
			l.mu.Lock()
			l.rec.Run.VMDeleted = true
			l.mu.Unlock()
			l.notify("deleted", v.Name, nil)
		}
	}
	l.mu.Lock()
	if rc := l.rec.Run.Receipt; rc != nil {
		rc.ExitCode = l.rec.Run.ExitCode
		if p := l.rec.Run.Patch; p != nil {
			rc.PatchSHA256 = p.SHA256
		}
	}
	switch {
	case l.rec.Run.State == api.RunInterrupted:
	case l.rec.Run.ExitCode < 0 && l.rec.Run.Error != nil:
		l.rec.Run.State = api.RunFailed
	default:
		l.rec.Run.State = api.RunDone
	}
	l.mu.Unlock()
}

// exec runs the command with the client's stdio and returns how it ended.
func (l *Live) exec(vmName string) (code, sig int, timedOut bool, err error) {
	m := l.m
	req := l.req.Exec
	var stdin io.Reader
	var stdinR *io.PipeReader
	if req.Stdin {
		pr, pw := io.Pipe()
		stdin, stdinR = pr, pr
		l.mu.Lock()
		l.stdinW = pw
		gone := l.stdinGone
		l.mu.Unlock()
		// The queue (what came so far, and what comes) into the pipe;
		// a nil chunk is EOF.
		go func() {
			for {
				select {
				case b := <-l.stdinQ:
					if b == nil {
						pw.Close()
						return
					}
					if _, err := pw.Write(b); err != nil {
						return
					}
				case <-l.done:
					pw.Close()
					return
				}
			}
		}()
		if gone {
			pw.CloseWithError(io.ErrUnexpectedEOF)
		}
	}
	stdout := writerFunc(func(p []byte) (int, error) {
		l.stdout.Write(p)
		c := append([]byte(nil), p...)
		l.emit(func(s Sink) error { return s.Stdout(c) })
		return len(p), nil
	})
	stderr := writerFunc(func(p []byte) (int, error) {
		l.stderr.Write(p)
		c := append([]byte(nil), p...)
		l.emit(func(s Sink) error { return s.Stderr(c) })
		return len(p), nil
	})
	p, err := m.o.VMs.Exec(context.Background(), vmName, req, stdin, stdout, stderr)
	var se *agent.StartError
	if errors.As(err, &se) {
		// The guest could not run the program: the command's outcome (127
		// not found, 126 not executable), as in a shell.
		msg := fmt.Sprintf("banger: %s: %s\n", se.Argv0, se.Message)
		stderr.Write([]byte(msg))
		l.emit(func(s Sink) error { return s.Exit(api.ExecExit{Code: se.Code}) })
		return se.Code, 0, false, nil
	}
	if err != nil {
		l.emit(func(s Sink) error { return s.Exit(api.ExecExit{Code: -1, Error: api.ToWire(err)}) })
		return -1, 0, false, err
	}
	l.mu.Lock()
	l.proc = p
	hung := l.hungUp
	l.mu.Unlock()
	if hung {
		p.Signal(syscall.SIGHUP)
	}
	var timer *time.Timer
	var timedOutFlag bool
	var tmu sync.Mutex
	if d := time.Duration(l.req.TimeoutSeconds) * time.Second; d > 0 {
		timer = time.AfterFunc(d, func() {
			tmu.Lock()
			timedOutFlag = true
			tmu.Unlock()
			p.Signal(syscall.SIGTERM)
			select {
			case <-p.Done():
			case <-time.After(killGrace):
				p.Signal(syscall.SIGKILL)
			}
		})
	}
	st, werr := p.Wait()
	if timer != nil {
		timer.Stop()
	}
	if stdinR != nil {
		stdinR.Close() // a feeder blocked on a command that never read
	}
	l.mu.Lock()
	l.proc = nil
	l.mu.Unlock()
	tmu.Lock()
	timedOut = timedOutFlag
	tmu.Unlock()
	exit := api.ExecExit{Code: st.Code, Signal: st.Signal}
	if werr != nil {
		exit.Error = api.ToWire(werr)
	}
	l.emit(func(s Sink) error { return s.Exit(exit) })
	return st.Code, st.Signal, timedOut, werr
}

// export writes the VM's workspace patch into the run's directory and
// describes it (nil when the workspace is unchanged). The guest's output is
// untrusted: it is bounded, and kept as it came when ParsePatch refuses it.
func (m *Manager) export(id, vmName string) (*api.RunPatch, error) {
	dir := m.o.Layout.RunDir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	tmp := filepath.Join(dir, "patch.tmp")
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp)
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), exportLimit)
	defer cancel()
	h := sha256.New()
	if err := m.o.VMs.ExportPatch(ctx, vmName, io.MultiWriter(f, h)); err != nil {
		return nil, err
	}
	n, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("keep the patch: %w", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if n == 0 {
		if err := m.o.VMs.MarkExported(ctx, vmName, sum); err != nil {
			return nil, err
		}
		return nil, nil
	}
	rp := &api.RunPatch{SHA256: sum, Bytes: n}
	f.Seek(0, io.SeekStart)
	// Checked without keeping its text (the daemon is root; the client
	// parses it again to use it).
	if cs, perr := workspace.ScanPatch(f, 0); perr != nil {
		rp.Refused = perr.Error()
	} else {
		rp.Files = len(cs)
		f.Seek(0, io.SeekStart)
		if stat, err := workspace.DiffstatOf(ctx, f); err == nil {
			rp.Diffstat = stat
		}
	}
	if err := os.Rename(tmp, m.o.Layout.RunPatch(id)); err != nil {
		return nil, fmt.Errorf("keep the patch: %w", err)
	}
	if rp.Refused == "" && rp.Files == 0 {
		os.Remove(m.o.Layout.RunPatch(id))
		rp = nil
	}
	if err := m.o.VMs.MarkExported(ctx, vmName, sum); err != nil {
		return rp, err
	}
	return rp, nil
}

// Get returns a run's record (a live one as it is now).
func (m *Manager) Get(ctx context.Context, id string) (api.Run, error) {
	row, err := m.o.Store.GetRun(ctx, id)
	if err != nil {
		return api.Run{}, err
	}
	m.mu.Lock()
	l := m.live[row.ID]
	m.mu.Unlock()
	if l != nil {
		l.mu.Lock()
		r := l.rec.Run
		l.mu.Unlock()
		r.Stdout, r.Stderr = l.stdout.String(), l.stderr.String()
		return r, nil
	}
	var rec record
	if err := json.Unmarshal(row.Record, &rec); err != nil {
		return api.Run{}, fmt.Errorf("run %s: bad record: %w", row.ID, err)
	}
	return rec.Run, nil
}

// List returns the newest runs first, at most limit (0: all), without
// their output tails.
func (m *Manager) List(ctx context.Context, limit int) ([]api.Run, error) {
	rows, err := m.o.Store.ListRuns(ctx, limit)
	if err != nil {
		return nil, err
	}
	out := make([]api.Run, 0, len(rows))
	for _, row := range rows {
		var rec record
		if err := json.Unmarshal(row.Record, &rec); err != nil {
			continue
		}
		r := rec.Run
		m.mu.Lock()
		if l := m.live[row.ID]; l != nil {
			l.mu.Lock()
			r = l.rec.Run
			l.mu.Unlock()
		}
		m.mu.Unlock()
		r.Stdout, r.Stderr = "", ""
		out = append(out, r)
	}
	return out, nil
}

// Patch opens a run's kept patch.
func (m *Manager) Patch(ctx context.Context, id string) (*os.File, error) {
	r, err := m.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.Patch == nil {
		return nil, errdefs.NotFound(fmt.Sprintf("run %s kept no patch (its workspace was unchanged, or it had none)", r.ID))
	}
	f, err := os.Open(m.o.Layout.RunPatch(r.ID))
	if err != nil {
		return nil, errdefs.NotFound(fmt.Sprintf("run %s: its patch is gone: %v", r.ID, err))
	}
	return f, nil
}

// SetOutcome records what the client did with a run's patch.
func (m *Manager) SetOutcome(ctx context.Context, id, outcome string) (api.Run, error) {
	if len(outcome) > 4096 || strings.ContainsAny(outcome, "\x00") {
		return api.Run{}, errdefs.InvalidArgument("outcome: at most 4096 bytes of text")
	}
	row, err := m.o.Store.GetRun(ctx, id)
	if err != nil {
		return api.Run{}, err
	}
	m.mu.Lock()
	l := m.live[row.ID]
	m.mu.Unlock()
	if l != nil {
		l.mu.Lock()
		l.rec.Run.Outcome = outcome
		l.mu.Unlock()
		return l.rec.Run, l.save()
	}
	var rec record
	if err := json.Unmarshal(row.Record, &rec); err != nil {
		return api.Run{}, err
	}
	rec.Run.Outcome = outcome
	b, _ := json.Marshal(rec)
	row.Record = b
	return rec.Run, m.o.Store.PutRun(ctx, row)
}

// Remove forgets an ended run and its patch.
func (m *Manager) Remove(ctx context.Context, id string) error {
	row, err := m.o.Store.GetRun(ctx, id)
	if err != nil {
		return err
	}
	m.mu.Lock()
	_, live := m.live[row.ID]
	m.mu.Unlock()
	if live {
		return errdefs.Conflict(fmt.Sprintf("run %s has not ended", row.ID))
	}
	if err := os.RemoveAll(m.o.Layout.RunDir(row.ID)); err != nil {
		return err
	}
	return m.o.Store.DeleteRun(ctx, row.ID)
}

// prune keeps the newest keepRuns runs.
func (m *Manager) prune() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := m.o.Store.ListRuns(ctx, 0)
	if err != nil || len(rows) <= keepRuns {
		return
	}
	for _, row := range rows[keepRuns:] {
		m.mu.Lock()
		_, live := m.live[row.ID]
		m.mu.Unlock()
		if live || (row.State != api.RunDone && row.State != api.RunFailed && row.State != api.RunCancelled && row.State != api.RunInterrupted) {
			continue
		}
		os.RemoveAll(m.o.Layout.RunDir(row.ID))
		m.o.Store.DeleteRun(ctx, row.ID)
	}
}

// Resume finishes the runs a stopped or crashed daemon left: each is
// marked interrupted, and its VM, if it is still there, is exported and
// deleted as the run asked. Call it after the VM manager's reconcile; it
// works in the background.
func (m *Manager) Resume(ctx context.Context) error {
	rows, err := m.o.Store.ListRuns(ctx, 0)
	if err != nil {
		return err
	}
	for _, row := range rows {
		switch row.State {
		case api.RunDone, api.RunFailed, api.RunCancelled, api.RunInterrupted:
			continue
		}
		var rec record
		if err := json.Unmarshal(row.Record, &rec); err != nil {
			m.o.Log.Warn("resume run: bad record", "run", row.ID, "err", err)
			continue
		}
		l := &Live{m: m, id: row.ID, rec: rec, done: make(chan struct{})}
		l.stdout.Write([]byte(rec.Run.Stdout))
		l.stderr.Write([]byte(rec.Run.Stderr))
		prev := rec.Run.State
		l.rec.Run.State = api.RunInterrupted
		l.fail(errdefs.Unavailable(fmt.Sprintf("bangerd stopped while the run was %s", prev)))
		m.mu.Lock()
		m.live[l.id] = l
		m.wg.Add(1)
		m.mu.Unlock()
		go func() {
			defer m.wg.Done()
			defer func() {
				l.mu.Lock()
				if l.rec.Run.EndedAt.IsZero() {
					l.rec.Run.EndedAt = time.Now().UTC()
				}
				l.mu.Unlock()
				l.save()
				m.forget(l)
				close(l.done)
			}()
			log := m.o.Log.With("run", l.id)
			name := l.rec.Run.VM
			if name == "" {
				return
			}
			gctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			v, err := m.o.VMs.Get(gctx, name)
			cancel()
			if err != nil {
				return // never created, or already gone
			}
			if prev == api.RunDeleting {
				l.rec.Export = false // exported before the daemon stopped
			}
			log.Info("resuming interrupted run", "vm", name, "was", prev)
			l.finish(v, v.Workspace != nil && l.rec.Export, l.rec.Delete, log)
			l.mu.Lock()
			l.rec.Run.State = api.RunInterrupted
			l.mu.Unlock()
		}()
	}
	return nil
}

// Close ends the live runs' commands (SIGTERM) and waits a while for them
// to export and delete; what is not done by then, Resume does next time.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	m.closed = true
	var lives []*Live
	for _, l := range m.live {
		lives = append(lives, l)
	}
	m.mu.Unlock()
	for _, l := range lives {
		l.mu.Lock()
		p, cancel := l.proc, l.cancel
		l.mu.Unlock()
		if p != nil {
			p.Signal(syscall.SIGTERM)
		} else if cancel != nil {
			cancel()
		}
	}
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(closeWait):
		m.o.Log.Warn("stopping with runs unfinished: the next start finishes them", "n", len(lives))
	case <-ctx.Done():
	}
	return nil
}

// tail keeps the last tailBytes written.
type tail struct {
	mu sync.Mutex
	b  []byte
}

func (t *tail) Write(p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > tailBytes {
		t.b = append(t.b[:0:0], t.b[len(t.b)-tailBytes:]...)
	}
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.ToValidUTF8(t.b, []byte("\uFFFD")))
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func newID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// removeWorkUploads closes a workspace's uploads (work disk, pack): the
// VM copied what it needed, or nobody will.
func removeWorkUploads(ws *api.WorkspaceSpec) {
	if ws == nil {
		return
	}
	if ws.Disk != nil {
		ws.Disk.Close()
	}
	if ws.PackFile != nil {
		ws.PackFile.Close()
	}
}
