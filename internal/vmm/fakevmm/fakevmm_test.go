package fakevmm_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/vmm/fakevmm"
	"github.com/banger-sh/banger/internal/vmm/vmmtest"
)

// fakeEnv is a "guest" for the fake: a file that looks like an ELF
// kernel, a small sparse raw base, and the real agent protocol's ping and
// shutdown (answered by the in-process agent).
func fakeEnv(t *testing.T) vmmtest.Env {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("\x7fELF fake kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "rootfs.ext4")
	if err := os.WriteFile(base, []byte("root"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(base, 16<<20); err != nil {
		t.Fatal(err)
	}
	return vmmtest.Env{
		Kernel: kernel, RootBase: base, RootBaseFormat: "raw",
		Ready: vmmtest.PingAgent, PowerOff: vmmtest.PowerOffAgent,
		BootTimeout: 10 * time.Second,
	}
}

// TestConformance runs the whole vmmtest suite against the fake: every
// process rule (detached, outlives contexts, identity by pid + start
// time, idempotent kill, stale handles, WaitExit), the agent transport,
// guest power-off and snapshot/restore with shape checks. No kernel boots.
func TestConformance(t *testing.T) {
	vmmtest.Run(t, fakevmm.New(), fakeEnv(t))
}

func TestFindProcessesAndExitReason(t *testing.T) {
	b := fakevmm.New()
	env := fakeEnv(t)
	root := t.TempDir()
	rt := filepath.Join(root, "run", "vm1")
	os.MkdirAll(rt, 0o700)
	disk := filepath.Join(root, "root.img")
	os.WriteFile(disk, nil, 0o644)
	vmmLog := filepath.Join(root, "vmm.log")
	h, err := b.Start(context.Background(), vmm.Spec{ID: "vm1", VCPUs: 1, MemoryMiB: 128, Kernel: env.Kernel,
		Root: vmm.Disk{Path: disk, Format: "raw"}, RuntimeDir: rt, ConsoleLog: filepath.Join(root, "console.log"), VMMLog: vmmLog})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Kill(context.Background(), h)
	got := b.FindProcesses(filepath.Join(root, "run"))
	if len(got) != 1 || got[0].PID != h.PID || got[0].ID != "vm1" {
		t.Errorf("FindProcesses = %+v, want pid %d id vm1", got, h.PID)
	}
	if other := fakevmm.New().FindProcesses(filepath.Join(root, "run")); len(other) != 1 {
		t.Errorf("another Backend (a restarted daemon) finds %+v", other)
	}
	if none := b.FindProcesses(filepath.Join(root, "ru")); len(none) != 0 {
		t.Errorf("a prefix of the runtime root matches: %+v", none)
	}
	if err := b.Crash(h, "boom"); err != nil {
		t.Fatal(err)
	}
	if err := b.WaitExit(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	tail, _ := os.ReadFile(vmmLog)
	if r := b.ExitReason(tail); r != "boom" {
		t.Errorf("ExitReason(%q) = %q", tail, r)
	}
	if r := b.ExitReason([]byte("fakevmm: starting x\n")); r != "" {
		t.Errorf("ExitReason of a start line = %q", r)
	}
	if got := b.FindProcesses(filepath.Join(root, "run")); len(got) != 0 {
		t.Errorf("FindProcesses after the crash = %+v", got)
	}
	_, err = b.Start(context.Background(), vmm.Spec{ID: "q", VCPUs: 1, MemoryMiB: 128, Kernel: env.Kernel,
		Root: vmm.Disk{Path: disk, Format: "qcow2"}, RuntimeDir: rt, ConsoleLog: filepath.Join(root, "c2"), VMMLog: filepath.Join(root, "v2")})
	if err == nil || !strings.Contains(err.Error(), "raw") {
		t.Errorf("Start with a qcow2 root = %v, want refused", err)
	}
}
