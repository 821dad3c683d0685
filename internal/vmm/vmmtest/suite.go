// Package vmmtest is the conformance suite every vmm.Backend must pass
// where it can run: Run boots real guests through the backend and checks
// the lifecycle rules written in package vmm (detached processes that
// outlive contexts, identity by pid + start time, idempotent kill,
// nothing left behind).
//
// The guest comes from Env. BusyboxGuest builds a small one from Debian's
// cloud kernel package and busybox, for use until (and alongside) the real
// image + agent. The suite asks nothing of the guest beyond Env.Ready and
// Env.PowerOff, so it also runs, whole, against internal/vmm/fakevmm
// (no kernel boots; the agent protocol is answered in-process).
package vmmtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/vmm"
)

// Env is a bootable guest and how to recognise that it is up.
type Env struct {
	Kernel         string // ELF vmlinux or bzImage
	Initrd         string // optional
	RootBase       string // read-only base of the root disk
	RootBaseFormat string // "raw" (default) or "qcow2"
	KernelArgs     []string
	MemoryMiB      int // default 256
	VCPUs          int // default 1
	// RootDisk makes a VM's writable root over base in dir. Default: the
	// disk strategy disk.Choose picks for the backend's RootFormats and
	// dir (a qcow2 overlay for QEMU, a reflink or sparse copy for
	// raw-only backends).
	RootDisk func(ctx context.Context, base, baseFormat, dir string) (vmm.Disk, error)
	// Ready is called with a fresh DialAgent connection and returns once
	// the guest answers on it (a ping for the real agent). nil: the suite
	// only checks that the connection opens.
	Ready func(ctx context.Context, conn net.Conn) error
	// PowerOff, when set, asks the guest to power itself off over a fresh
	// DialAgent connection; the suite then checks that the VMM process
	// ends by itself.
	PowerOff func(ctx context.Context, conn net.Conn) error
	// BootTimeout bounds Start + Ready (default 90 s: software emulation
	// on a busy host is slow).
	BootTimeout time.Duration
}

func (e Env) withDefaults(b vmm.Backend) Env {
	if e.RootBaseFormat == "" {
		e.RootBaseFormat = disk.FormatRaw
	}
	if e.MemoryMiB == 0 {
		e.MemoryMiB = 256
	}
	if e.VCPUs == 0 {
		e.VCPUs = 1
	}
	if e.BootTimeout == 0 {
		e.BootTimeout = 90 * time.Second
	}
	if e.RootDisk == nil {
		e.RootDisk = func(ctx context.Context, base, format, dir string) (vmm.Disk, error) {
			s, err := disk.Choose(b.RootFormats(), dir, disk.RealHost())
			if err != nil {
				return vmm.Disk{}, err
			}
			img, err := disk.Make(ctx, s, disk.Image{Path: base, Format: format}, filepath.Join(dir, "root"), 0)
			if err != nil {
				return vmm.Disk{}, err
			}
			return vmm.Disk{Path: img.Path, Format: img.Format}, nil
		}
	}
	return e
}

// Run runs the conformance suite against b.
func Run(t *testing.T, b vmm.Backend, env Env) {
	env = env.withDefaults(b)
	s := &suite{b: b, env: env}
	t.Run("Lifecycle", s.lifecycle)
	t.Run("BadKernel", s.badKernel)
	t.Run("SurvivesCallerContext", s.survivesCallerContext)
	t.Run("ExternalKill", s.externalKill)
	t.Run("KillIdempotent", s.killIdempotent)
	t.Run("StaleHandleNeverTouchesVM", s.staleHandle)
	t.Run("WaitExitHonoursContext", s.waitExitContext)
	t.Run("TwoVMsOneBase", s.twoVMs)
	if env.PowerOff != nil {
		t.Run("GuestPowerOffEndsVMM", s.guestPowerOff)
	}
	if _, ok := b.(vmm.Snapshotter); ok {
		t.Run("Snapshot", s.snapshot)
	}
}

type suite struct {
	b   vmm.Backend
	env Env
}

// vm is one VM under test.
type vm struct {
	spec vmm.Spec
	h    vmm.Handle
}

// newSpec prepares a runtime dir (short: unix socket paths are limited to
// 107 bytes), a root overlay and logs, all removed at cleanup.
func (s *suite) newSpec(t *testing.T) vmm.Spec {
	t.Helper()
	dir, err := os.MkdirTemp("", "bg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	root, err := s.env.RootDisk(context.Background(), s.env.RootBase, s.env.RootBaseFormat, dir)
	if err != nil {
		t.Fatal(err)
	}
	var id [4]byte
	_, _ = rand.Read(id[:])
	return vmm.Spec{
		ID:         "t" + hex.EncodeToString(id[:]),
		VCPUs:      s.env.VCPUs,
		MemoryMiB:  s.env.MemoryMiB,
		Kernel:     s.env.Kernel,
		Initrd:     s.env.Initrd,
		KernelArgs: s.env.KernelArgs,
		Root:       root,
		RuntimeDir: run,
		ConsoleLog: filepath.Join(dir, "console.log"),
		VMMLog:     filepath.Join(dir, "vmm.log"),
	}
}

// start starts spec and registers a cleanup that kills the VM and checks
// that nothing is left. On failure it logs the VM's logs.
func (s *suite) start(t *testing.T, ctx context.Context, spec vmm.Spec) *vm {
	t.Helper()
	t0 := time.Now()
	h, err := s.b.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("%s: Start returned after %v (pid %d, accel %s)", spec.ID, time.Since(t0).Round(time.Millisecond), h.PID, h.Accel)
	v := &vm{spec: spec, h: h}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.b.Kill(ctx, h); err != nil {
			t.Errorf("cleanup Kill: %v", err)
		}
		if pids := processesMentioning(spec.RuntimeDir); len(pids) > 0 {
			t.Errorf("processes left after Kill: %v", pids)
		}
		if t.Failed() {
			dumpLogs(t, spec)
		}
	})
	return v
}

// ready dials the agent transport and waits for the guest to answer.
func (s *suite) ready(t *testing.T, ctx context.Context, v *vm) time.Duration {
	t.Helper()
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.env.BootTimeout)
	defer cancel()
	conn, err := s.b.DialAgent(ctx, v.h)
	if err != nil {
		t.Fatalf("DialAgent: %v", err)
	}
	defer conn.Close()
	if s.env.Ready != nil {
		if err := s.env.Ready(ctx, conn); err != nil {
			t.Fatalf("guest not ready after %v: %v", time.Since(t0), err)
		}
	}
	return time.Since(t0)
}

func (s *suite) lifecycle(t *testing.T) {
	ctx := context.Background()
	spec := s.newSpec(t)
	t0 := time.Now()
	v := s.start(t, ctx, spec)
	if v.h.PID <= 0 || v.h.StartTime == 0 || v.h.BootID == "" || v.h.Backend != s.b.Name() {
		t.Errorf("incomplete handle %+v", v.h)
	}
	if st := s.b.Status(ctx, v.h); st != vmm.StateRunning {
		t.Fatalf("Status after Start = %s, want running", st)
	}
	// FindProcesses knows it by its runtime dir (reconcile relies on it).
	runtimeRoot, id := filepath.Dir(spec.RuntimeDir), filepath.Base(spec.RuntimeDir)
	if ps := s.b.FindProcesses(runtimeRoot); !slices.Contains(ps, vmm.Process{PID: v.h.PID, ID: id}) {
		t.Errorf("FindProcesses(%s) = %+v, want pid %d id %s among them", runtimeRoot, ps, v.h.PID, id)
	}
	if ps := s.b.FindProcesses(spec.RuntimeDir + "-other"); len(ps) != 0 {
		t.Errorf("FindProcesses of another runtime root = %+v", ps)
	}
	s.ready(t, ctx, v)
	t.Logf("%s: Start call -> guest ready: %v", spec.ID, time.Since(t0).Round(time.Millisecond))

	// The transport can be dialled again after the first client leaves.
	s.ready(t, ctx, v)

	t1 := time.Now()
	if err := s.b.Kill(ctx, v.h); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	t.Logf("%s: Kill -> gone: %v", spec.ID, time.Since(t1).Round(time.Millisecond))
	if st := s.b.Status(ctx, v.h); st != vmm.StateExited {
		t.Errorf("Status after Kill = %s, want exited", st)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := s.b.WaitExit(wctx, v.h); err != nil {
		t.Errorf("WaitExit after Kill: %v", err)
	}
	if alive(v.h.PID) && processMentions(v.h.PID, spec.RuntimeDir) {
		t.Errorf("pid %d still running after Kill", v.h.PID)
	}
	assertNoSockets(t, spec.RuntimeDir)
	if _, err := s.b.DialAgent(ctx, v.h); err == nil {
		t.Error("DialAgent succeeded on a killed VM")
	}
	if ps := s.b.FindProcesses(runtimeRoot); slices.ContainsFunc(ps, func(p vmm.Process) bool { return p.PID == v.h.PID }) {
		t.Errorf("FindProcesses after Kill = %+v", ps)
	}
}

func (s *suite) badKernel(t *testing.T) {
	spec := s.newSpec(t)
	bad := filepath.Join(filepath.Dir(spec.RuntimeDir), "bad-kernel")
	if err := os.WriteFile(bad, bytes.Repeat([]byte("not a kernel\n"), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	spec.Kernel = bad
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h, err := s.b.Start(ctx, spec)
	if err == nil {
		t.Cleanup(func() { _ = s.b.Kill(context.Background(), h) })
		t.Fatalf("Start with a bad kernel succeeded: %+v", h)
	}
	t.Logf("Start with a bad kernel: %v", err)
	if pids := processesMentioning(spec.RuntimeDir); len(pids) > 0 {
		t.Errorf("processes left after a failed Start: %v", pids)
	}
	assertNoSockets(t, spec.RuntimeDir)
}

// survivesCallerContext: the seed's bug was a VMM killed ~150 ms after
// the request that started it ended.
func (s *suite) survivesCallerContext(t *testing.T) {
	spec := s.newSpec(t)
	ctx, cancel := context.WithCancel(context.Background())
	v := s.start(t, ctx, spec)
	cancel()
	time.Sleep(time.Second)
	if st := s.b.Status(context.Background(), v.h); st != vmm.StateRunning {
		t.Fatalf("Status 1 s after the start context ended = %s, want running", st)
	}
}

func (s *suite) externalKill(t *testing.T) {
	ctx := context.Background()
	v := s.start(t, ctx, s.newSpec(t))
	if err := syscall.Kill(v.h.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for s.b.Status(ctx, v.h) != vmm.StateExited {
		if time.Now().After(deadline) {
			t.Fatalf("Status still %s 2 s after SIGKILL", s.b.Status(ctx, v.h))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := s.b.Kill(ctx, v.h); err != nil {
		t.Errorf("Kill after external kill: %v", err)
	}
	assertNoSockets(t, v.spec.RuntimeDir)
}

func (s *suite) killIdempotent(t *testing.T) {
	ctx := context.Background()
	v := s.start(t, ctx, s.newSpec(t))
	for i := 0; i < 3; i++ {
		if err := s.b.Kill(ctx, v.h); err != nil {
			t.Fatalf("Kill #%d: %v", i+1, err)
		}
		if st := s.b.Status(ctx, v.h); st != vmm.StateExited {
			t.Fatalf("Status after Kill #%d = %s", i+1, st)
		}
	}
	if err := s.b.Kill(ctx, vmm.Handle{}); err != nil {
		t.Errorf("Kill of an empty handle: %v", err)
	}
}

// staleHandle: a handle whose pid now belongs to another process (here:
// the same pid with a different start time, or a different boot) must be
// seen as exited and must never be signalled or disturbed.
func (s *suite) staleHandle(t *testing.T) {
	ctx := context.Background()
	v := s.start(t, ctx, s.newSpec(t))
	stale := []vmm.Handle{v.h, v.h}
	stale[0].StartTime++
	stale[1].BootID = "00000000-0000-0000-0000-000000000000"
	for i, h := range stale {
		if st := s.b.Status(ctx, h); st != vmm.StateExited {
			t.Errorf("stale handle %d: Status = %s, want exited", i, st)
		}
		if err := s.b.Kill(ctx, h); err != nil {
			t.Errorf("stale handle %d: Kill: %v", i, err)
		}
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		if err := s.b.WaitExit(wctx, h); err != nil {
			t.Errorf("stale handle %d: WaitExit: %v", i, err)
		}
		cancel()
	}
	if st := s.b.Status(ctx, v.h); st != vmm.StateRunning {
		t.Fatalf("the real VM after Kill of stale handles: %s, want running", st)
	}
	s.ready(t, ctx, v)
}

func (s *suite) waitExitContext(t *testing.T) {
	ctx := context.Background()
	v := s.start(t, ctx, s.newSpec(t))
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := s.b.WaitExit(wctx, v.h); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitExit on a running VM = %v, want deadline exceeded", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.b.WaitExit(ctx, v.h) }()
	time.Sleep(100 * time.Millisecond)
	if err := s.b.Kill(ctx, v.h); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("WaitExit: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("WaitExit did not return after Kill")
	}
}

// twoVMs: two VMs at once on overlays of one base; the second overlay is
// made while the first VM runs.
func (s *suite) twoVMs(t *testing.T) {
	ctx := context.Background()
	before, err := os.Stat(s.env.RootBase)
	if err != nil {
		t.Fatal(err)
	}
	a := s.start(t, ctx, s.newSpec(t))
	b := s.start(t, ctx, s.newSpec(t))
	errs := make(chan error, 2)
	for _, v := range []*vm{a, b} {
		go func() {
			cctx, cancel := context.WithTimeout(ctx, s.env.BootTimeout)
			defer cancel()
			conn, err := s.b.DialAgent(cctx, v.h)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			if s.env.Ready != nil {
				err = s.env.Ready(cctx, conn)
			}
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("guest not ready: %v", err)
		}
	}
	for _, v := range []*vm{a, b} {
		if st := s.b.Status(ctx, v.h); st != vmm.StateRunning {
			t.Errorf("%s: %s", v.spec.ID, st)
		}
	}
	if err := s.b.Kill(ctx, a.h); err != nil {
		t.Fatal(err)
	}
	if st := s.b.Status(ctx, b.h); st != vmm.StateRunning {
		t.Errorf("killing one VM changed the other: %s", st)
	}
	if err := s.b.Kill(ctx, b.h); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(s.env.RootBase)
	if err != nil {
		t.Fatal(err)
	}
	if !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() {
		t.Errorf("the shared base changed: %v %d -> %v %d", before.ModTime(), before.Size(), after.ModTime(), after.Size())
	}
}

func assertNoSockets(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Type()&os.ModeSocket != 0 {
			t.Errorf("socket left in runtime dir: %s", filepath.Join(dir, e.Name()))
		}
	}
}

func dumpLogs(t *testing.T, spec vmm.Spec) {
	for _, p := range []string{spec.VMMLog, spec.ConsoleLog} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if len(b) > 4096 {
			b = b[len(b)-4096:]
		}
		t.Logf("--- %s:\n%s", p, b)
	}
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// processesMentioning lists the live (non-zombie) processes whose command
// line contains s, other than this one.
func processesMentioning(s string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if processMentions(pid, s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func processMentions(pid int, s string) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i > 0 && strings.HasPrefix(string(stat[i+1:]), " Z") {
		return false
	}
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(cmd, []byte(s))
}

// guestPowerOff: a guest that powers off ends its VMM process (no reboot),
// and the backend sees it.
func (s *suite) guestPowerOff(t *testing.T) {
	ctx := context.Background()
	v := s.start(t, ctx, s.newSpec(t))
	s.ready(t, ctx, v)
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := s.b.DialAgent(pctx, v.h)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := s.env.PowerOff(pctx, conn); err != nil {
		t.Fatalf("power off: %v", err)
	}
	conn.Close()
	if err := s.b.WaitExit(pctx, v.h); err != nil {
		t.Fatalf("VMM still running after the guest powered off: %v", err)
	}
	t.Logf("%s: power-off request -> VMM gone: %v", v.spec.ID, time.Since(t0).Round(time.Millisecond))
	if st := s.b.Status(ctx, v.h); st != vmm.StateExited {
		t.Errorf("Status = %s, want exited", st)
	}
}
