package run

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/progress"
	"github.com/banger-sh/banger/internal/store"
	"github.com/banger-sh/banger/internal/testhome"
)

// fakeVMs stands in for the VM manager (the real one boots VMs; the e2e
// tests run runs on real VMs): it records what a run asks of it.
type fakeVMs struct {
	mu        sync.Mutex
	vms       map[string]api.VM
	calls     []string
	createErr error
	createGo  chan struct{} // when set, Create waits for it (or ctx)
	exportErr error
	patch     string
	proc      *fakeProc
}

func (f *fakeVMs) call(s string) {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
}

func (f *fakeVMs) Create(ctx context.Context, req api.CreateVMRequest, p progress.Func) (api.VM, error) {
	f.call("create")
	p.Phase("boot", "fake")
	if f.createGo != nil {
		select {
		case <-f.createGo:
		case <-ctx.Done():
			return api.VM{}, ctx.Err()
		}
	}
	if f.createErr != nil {
		return api.VM{}, f.createErr
	}
	v := api.VM{Name: req.Name, State: "running"}
	if req.Workspace != nil {
		v.Workspace = &api.WorkspaceInfo{Path: "/root/repo"}
	}
	f.mu.Lock()
	f.vms[v.Name] = v
	f.mu.Unlock()
	return v, nil
}

func (f *fakeVMs) Exec(ctx context.Context, name string, req api.ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (Process, error) {
	f.call("exec " + strings.Join(req.Argv, " "))
	p := f.proc
	p.start(stdin, stdout, stderr)
	return p, nil
}

func (f *fakeVMs) ExportPatch(ctx context.Context, name string, w io.Writer) error {
	f.call("export")
	if f.exportErr != nil {
		return f.exportErr
	}
	_, err := io.WriteString(w, f.patch)
	return err
}

func (f *fakeVMs) MarkExported(ctx context.Context, name, digest string) error {
	f.call("marked")
	return nil
}

func (f *fakeVMs) Delete(ctx context.Context, name string, force bool) error {
	f.call(fmt.Sprintf("delete force=%v", force))
	f.mu.Lock()
	delete(f.vms, name)
	f.mu.Unlock()
	return nil
}

func (f *fakeVMs) Get(ctx context.Context, name string) (api.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vms[name]
	if !ok {
		return api.VM{}, errdefs.NotFound("no vm " + name)
	}
	return v, nil
}

// fakeProc is a command: it prints, reads stdin into got, and exits when
// signalled (128+sig) or when exit is closed (code).
type fakeProc struct {
	out     string
	code    int
	exit    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	sigs    []syscall.Signal
	got     string
	st      agent.ExitStatus
	started chan struct{}
}

func newProc(out string, code int) *fakeProc {
	return &fakeProc{out: out, code: code, exit: make(chan struct{}), done: make(chan struct{}), started: make(chan struct{})}
}

func (p *fakeProc) start(stdin io.Reader, stdout, stderr io.Writer) {
	go func() {
		stdout.Write([]byte(p.out))
		stderr.Write([]byte("err\n"))
		close(p.started)
		if stdin != nil {
			b, _ := io.ReadAll(stdin)
			p.mu.Lock()
			p.got = string(b)
			p.mu.Unlock()
		}
		<-p.exit
		close(p.done)
	}()
}

func (p *fakeProc) Wait() (agent.ExitStatus, error) {
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.st.Code == 0 && p.st.Signal == 0 {
		p.st.Code = p.code
	}
	return p.st, nil
}
func (p *fakeProc) Done() <-chan struct{} { return p.done }
func (p *fakeProc) Signal(s syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sigs = append(p.sigs, s)
	if p.st.Signal == 0 {
		p.st = agent.ExitStatus{Code: 128 + int(s), Signal: int(s)}
		select {
		case <-p.exit:
		default:
			close(p.exit)
		}
	}
	return nil
}
func (p *fakeProc) Resize(uint16, uint16) error { return nil }

// recSink records a run's stream.
type recSink struct {
	mu     sync.Mutex
	events []string
	out    strings.Builder
	exit   *api.ExecExit
	result *api.Run
	fail   bool
}

func (s *recSink) Event(ev api.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		return errors.New("gone")
	}
	if ev.Progress != nil {
		s.events = append(s.events, ev.Progress.Phase)
	}
	if ev.Run != nil {
		s.events = append(s.events, "run:"+ev.Run.Type)
	}
	return nil
}
func (s *recSink) Stdout(p []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.out.Write(p)
	return nil
}
func (s *recSink) Stderr(p []byte) error { return nil }
func (s *recSink) Exit(x api.ExecExit) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.exit = &x
	return nil
}
func (s *recSink) Result(r api.Run) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.result = &r
	return nil
}

func newManager(t *testing.T, vms *fakeVMs) (*Manager, paths.Layout) {
	t.Helper()
	l := testhome.Layout(t)
	st, err := store.Open(context.Background(), l.StoreFile())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if vms.vms == nil {
		vms.vms = map[string]api.VM{}
	}
	return New(Options{VMs: vms, Store: st, Layout: l, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}), l
}

func wait(t *testing.T, l *Live) {
	t.Helper()
	select {
	case <-l.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("run did not end")
	}
}

const onePatch = "diff --git a/new.txt b/new.txt\nnew file mode 100644\nindex 0000000..3b18e51\n--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+hello\n"

func TestRunExportsThenDeletes(t *testing.T) {
	vms := &fakeVMs{proc: newProc("out\n", 3), patch: onePatch}
	m, layout := newManager(t, vms)
	diskPath := filepath.Join(t.TempDir(), "upload")
	os.WriteFile(diskPath, []byte("disk"), 0o600)
	disk, err := os.Open(diskPath)
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	sink := &recSink{}
	l, err := m.Start(api.RunRequest{
		VM:   api.CreateVMRequest{Name: "r1", Workspace: &api.WorkspaceSpec{Disk: disk, Repo: "/repo"}},
		Exec: api.ExecRequest{Argv: []string{"make", "test"}, Env: []string{"SECRET=hunter2"}},
	}, sink)
	if err != nil {
		t.Fatal(err)
	}
	close(vms.proc.exit)
	wait(t, l)
	want := []string{"create", "exec make test", "export", "marked", "delete force=true"}
	if strings.Join(vms.calls, "|") != strings.Join(want, "|") {
		t.Fatalf("calls %v, want %v", vms.calls, want)
	}
	r := sink.result
	if r == nil || r.State != api.RunDone || r.ExitCode != 3 || !r.VMDeleted || r.Patch == nil || r.Patch.Files != 1 || r.Error != nil {
		t.Fatalf("result %+v", r)
	}
	if sink.exit == nil || sink.exit.Code != 3 || sink.out.String() != "out\n" {
		t.Fatalf("stream: exit %+v out %q", sink.exit, sink.out.String())
	}
	if got := strings.Join(sink.events, ","); got != "boot,run:created,run:exported,run:deleted" {
		t.Fatalf("events %s", got)
	}
	// The upload's descriptor is closed (the VM copied it, or not).
	if _, err := disk.Stat(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("upload left open: %v", err)
	}
	// The record, as stored: the patch, output tails, no env values.
	got, err := m.Get(context.Background(), l.ID()[:6])
	if err != nil || got.Patch == nil || got.Stdout != "out\n" || got.Stderr != "err\n" || got.Phases["export"] < 0 {
		t.Fatalf("stored %+v %v", got, err)
	}
	row, _ := m.o.Store.GetRun(context.Background(), l.ID())
	if strings.Contains(string(row.Record), "hunter2") || !strings.Contains(string(row.Record), `"SECRET"`) {
		t.Fatalf("the record keeps env values, or not their names: %s", row.Record)
	}
	f, err := m.Patch(context.Background(), l.ID())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(f)
	f.Close()
	if string(b) != onePatch {
		t.Fatalf("patch %q", b)
	}
	if _, err := os.Stat(layout.RunPatch(l.ID())); err != nil {
		t.Fatal(err)
	}
}

// TestClientGoneHangsUpThenFinishes: the client goes away mid-command: the
// command is hung up (SIGHUP, exit 129), and the run still exports and
// deletes; detached, the command goes on.
func TestClientGoneHangsUpThenFinishes(t *testing.T) {
	vms := &fakeVMs{proc: newProc("", 0), patch: onePatch}
	m, _ := newManager(t, vms)
	l, err := m.Start(api.RunRequest{VM: api.CreateVMRequest{Name: "r2", Workspace: &api.WorkspaceSpec{}}, Exec: api.ExecRequest{Argv: []string{"sleep", "300"}, Stdin: true}}, &recSink{})
	if err != nil {
		t.Fatal(err)
	}
	<-vms.proc.started
	l.Detach()
	wait(t, l)
	r, _ := m.Get(context.Background(), l.ID())
	if r.ExitCode != 129 || r.Signal != 1 || !r.VMDeleted || r.Patch == nil || r.State != api.RunDone {
		t.Fatalf("%+v", r)
	}

	vms2 := &fakeVMs{proc: newProc("", 5)}
	m2, _ := newManager(t, vms2)
	l2, err := m2.Start(api.RunRequest{VM: api.CreateVMRequest{Name: "r3"}, Exec: api.ExecRequest{Argv: []string{"x"}}, Detach: true}, &recSink{})
	if err != nil {
		t.Fatal(err)
	}
	<-vms2.proc.started
	l2.Detach()
	time.Sleep(100 * time.Millisecond)
	if len(vms2.proc.sigs) != 0 {
		t.Fatalf("a detached run's command was signalled: %v", vms2.proc.sigs)
	}
	close(vms2.proc.exit)
	wait(t, l2)
	if r, _ := m2.Get(context.Background(), l2.ID()); r.ExitCode != 5 {
		t.Fatalf("%+v", r)
	}
}

// TestSignalBeforeExecCancels: a signal (Ctrl-C) during the create cancels
// the run: no command, no VM.
func TestSignalBeforeExecCancels(t *testing.T) {
	vms := &fakeVMs{proc: newProc("", 0), createGo: make(chan struct{})}
	m, _ := newManager(t, vms)
	sink := &recSink{}
	l, err := m.Start(api.RunRequest{VM: api.CreateVMRequest{Name: "r4"}, Exec: api.ExecRequest{Argv: []string{"x"}}}, sink)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	l.Signal(syscall.SIGINT)
	wait(t, l)
	if r := sink.result; r == nil || r.State != api.RunCancelled || r.ExitCode != -1 {
		t.Fatalf("%+v", r)
	}
	if len(vms.calls) != 1 {
		t.Fatalf("calls %v", vms.calls)
	}
}

// TestExportErrorKeepsTheVM: an export that fails keeps the VM (nothing is
// lost) and says so.
func TestExportErrorKeepsTheVM(t *testing.T) {
	vms := &fakeVMs{proc: newProc("", 0), exportErr: errors.New("agent gone")}
	m, _ := newManager(t, vms)
	sink := &recSink{}
	l, _ := m.Start(api.RunRequest{VM: api.CreateVMRequest{Name: "r5", Workspace: &api.WorkspaceSpec{}}, Exec: api.ExecRequest{Argv: []string{"x"}}}, sink)
	close(vms.proc.exit)
	wait(t, l)
	r := sink.result
	if r.VMDeleted || r.Error == nil || !strings.Contains(r.Error.Message, "the vm is kept") {
		t.Fatalf("%+v", r)
	}
	for _, c := range vms.calls {
		if strings.HasPrefix(c, "delete") {
			t.Fatalf("deleted after a failed export: %v", vms.calls)
		}
	}
	if _, err := vms.Get(context.Background(), "r5"); err != nil {
		t.Fatal("the VM is gone")
	}
}

func TestTimeoutEndsTheCommand(t *testing.T) {
	vms := &fakeVMs{proc: newProc("", 0)}
	m, _ := newManager(t, vms)
	l, _ := m.Start(api.RunRequest{VM: api.CreateVMRequest{Name: "r6"}, Exec: api.ExecRequest{Argv: []string{"x"}}, TimeoutSeconds: 1}, &recSink{})
	wait(t, l)
	r, _ := m.Get(context.Background(), l.ID())
	if !r.TimedOut || r.ExitCode != 128+15 {
		t.Fatalf("%+v", r)
	}
	if _, err := m.Start(api.RunRequest{Exec: api.ExecRequest{Argv: []string{"x"}}, TimeoutSeconds: -1}, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatal(err)
	}
	if _, err := m.Start(api.RunRequest{}, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatal(err)
	}
}

// TestResumeFinishesInterruptedRuns: a run a dead daemon left mid-exec is
// exported and deleted by the next daemon and marked interrupted.
func TestResumeFinishesInterruptedRuns(t *testing.T) {
	vms := &fakeVMs{proc: newProc("", 0), patch: onePatch}
	m, _ := newManager(t, vms)
	vms.vms["r7"] = api.VM{Name: "r7", Workspace: &api.WorkspaceInfo{Path: "/root/repo"}}
	rec := record{Run: api.Run{ID: "abc123", State: api.RunRunning, VM: "r7", Argv: []string{"x"}, ExitCode: -1, Phases: map[string]int64{}}, Export: true, Delete: true}
	l := &Live{m: m, id: rec.Run.ID, rec: rec}
	if err := l.save(); err != nil {
		t.Fatal(err)
	}
	if err := m.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	m.wg.Wait()
	r, err := m.Get(context.Background(), "abc123")
	if err != nil {
		t.Fatal(err)
	}
	if r.State != api.RunInterrupted || !r.VMDeleted || r.Patch == nil || r.Error == nil || r.EndedAt.IsZero() {
		t.Fatalf("%+v", r)
	}
	if strings.Join(vms.calls, "|") != "export|marked|delete force=true" {
		t.Fatalf("calls %v", vms.calls)
	}
}

func TestTailIsBounded(t *testing.T) {
	var tl tail
	for i := 0; i < 100; i++ {
		tl.Write([]byte(strings.Repeat("x", 1000)))
	}
	tl.Write([]byte("end"))
	if s := tl.String(); len(s) != tailBytes || !strings.HasSuffix(s, "end") {
		t.Fatalf("%d bytes", len(s))
	}
}

// TestStdinBeforeTheCommandRuns: stdin (and its end) that arrives while the
// VM is still being made reaches the command.
func TestStdinBeforeTheCommandRuns(t *testing.T) {
	vms := &fakeVMs{proc: newProc("", 0), createGo: make(chan struct{})}
	m, _ := newManager(t, vms)
	l, err := m.Start(api.RunRequest{VM: api.CreateVMRequest{Name: "r8"}, Exec: api.ExecRequest{Argv: []string{"cat"}, Stdin: true}}, &recSink{})
	if err != nil {
		t.Fatal(err)
	}
	l.Stdin([]byte("early "))
	l.Stdin([]byte("input"))
	l.StdinEOF()
	close(vms.createGo)
	<-vms.proc.started
	waitFor := time.Now().Add(5 * time.Second)
	for {
		vms.proc.mu.Lock()
		got := vms.proc.got
		vms.proc.mu.Unlock()
		if got == "early input" {
			break
		}
		if time.Now().After(waitFor) {
			t.Fatalf("the command read %q", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(vms.proc.exit)
	wait(t, l)
}
