package qemu_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/vmm/qemu"
	"github.com/banger-sh/banger/internal/vmm/vmmtest"
)

// starterEnv makes the test binary act as a short-lived daemon: start the
// VM described by the JSON spec in the variable's value, print the handle
// as JSON, exit.
const starterEnv = "BANGER_QEMU_TEST_STARTER"

func TestMain(m *testing.M) {
	if js := os.Getenv(starterEnv); js != "" {
		var spec vmm.Spec
		if err := json.Unmarshal([]byte(js), &spec); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		h, err := qemu.New().Start(context.Background(), spec)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		json.NewEncoder(os.Stdout).Encode(h)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func needQEMU(t *testing.T) *qemu.Backend {
	t.Helper()
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	b := qemu.New()
	if av := b.Available(context.Background()); !av.OK {
		t.Skipf("qemu backend unavailable: %s", av.Reason)
	}
	return b
}

// TestConformance runs the vmm conformance suite against real QEMU with
// the real guest: the test image with the agent as PID 1.
func TestConformance(t *testing.T) {
	b := needQEMU(t)
	vmmtest.Run(t, b, vmmtest.AgentGuest(t))
}

// TestConformanceBusybox runs the suite with the small busybox guest,
// which needs only the kernel package (no image build, no agent).
func TestConformanceBusybox(t *testing.T) {
	b := needQEMU(t)
	vmmtest.Run(t, b, vmmtest.BusyboxGuest(t))
}

func newSpec(t *testing.T, env vmmtest.Env) vmm.Spec {
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
	root := filepath.Join(dir, "root.qcow2")
	if err := disk.CreateOverlay(context.Background(), env.RootBase, env.RootBaseFormat, root, 0); err != nil {
		t.Fatal(err)
	}
	return vmm.Spec{
		ID: "q" + filepath.Base(dir)[2:], VCPUs: 1, MemoryMiB: 256,
		Kernel: env.Kernel, Initrd: env.Initrd, KernelArgs: env.KernelArgs,
		Root:       vmm.Disk{Path: root, Format: "qcow2"},
		RuntimeDir: run,
		ConsoleLog: filepath.Join(dir, "console.log"),
		VMMLog:     filepath.Join(dir, "vmm.log"),
	}
}

func startVM(t *testing.T, b *qemu.Backend, spec vmm.Spec) vmm.Handle {
	t.Helper()
	h, err := b.Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Kill(context.Background(), h); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return h
}

// TestQEMUSpecifics covers what the generic suite cannot: the process
// name, the error text of a failed start, and a live process whose QMP
// does not answer.
func TestQEMUSpecifics(t *testing.T) {
	b := needQEMU(t)
	env := vmmtest.BusyboxGuest(t)
	ctx := context.Background()

	t.Run("ProcessName", func(t *testing.T) {
		spec := newSpec(t, env)
		h := startVM(t, b, spec)
		comm, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(h.PID), "comm"))
		if err != nil {
			t.Fatal(err)
		}
		want := (qemu.ProcessPrefix + spec.ID)
		if len(want) > 15 {
			want = want[:15]
		}
		if strings.TrimSpace(string(comm)) != want {
			t.Errorf("comm %q, want %q", comm, want)
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(h.PID), "cmdline"))
		if !strings.Contains(string(cmdline), "banger-"+spec.ID+",process=") {
			t.Errorf("cmdline lacks the -name: %q", cmdline)
		}
		if h.Accel != qemu.DetectAccel().Accel {
			t.Errorf("handle accel %s", h.Accel)
		}
	})

	t.Run("BadKernelErrorHasLogTail", func(t *testing.T) {
		spec := newSpec(t, env)
		spec.Kernel = filepath.Join(filepath.Dir(spec.RuntimeDir), "missing-kernel")
		_, err := b.Start(ctx, spec)
		if err == nil {
			t.Fatal("Start with a missing kernel succeeded")
		}
		if !strings.Contains(err.Error(), "vmm log:") || !strings.Contains(err.Error(), "missing-kernel") {
			t.Errorf("error lacks QEMU's own message: %v", err)
		}
	})

	t.Run("StoppedProcessIsUnknown", func(t *testing.T) {
		spec := newSpec(t, env)
		h := startVM(t, b, spec)
		if err := syscall.Kill(h.PID, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		st := b.Status(sctx, h)
		cancel()
		_ = syscall.Kill(h.PID, syscall.SIGCONT)
		if st != vmm.StateUnknown {
			t.Errorf("Status of a stopped QEMU = %s, want unknown", st)
		}
		if st := b.Status(ctx, h); st != vmm.StateRunning {
			t.Errorf("Status after SIGCONT = %s", st)
		}
	})

	t.Run("KillStoppedProcess", func(t *testing.T) {
		spec := newSpec(t, env)
		h := startVM(t, b, spec)
		if err := syscall.Kill(h.PID, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		if err := b.Kill(ctx, h); err != nil {
			t.Fatal(err)
		}
		t.Logf("Kill of a stopped QEMU (QMP dead) took %v", time.Since(t0).Round(time.Millisecond))
		if st := b.Status(ctx, h); st != vmm.StateExited {
			t.Errorf("Status = %s", st)
		}
	})

	t.Run("KillWithEndedContext", func(t *testing.T) {
		spec := newSpec(t, env)
		h := startVM(t, b, spec)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := b.Kill(cctx, h); err != nil {
			t.Fatalf("Kill with an ended context: %v", err)
		}
		if st := b.Status(ctx, h); st != vmm.StateExited {
			t.Errorf("Status = %s", st)
		}
	})

	t.Run("RestartAppendsLogs", func(t *testing.T) {
		spec := newSpec(t, env)
		for i := 0; i < 2; i++ {
			h, err := b.Start(ctx, spec)
			if err != nil {
				t.Fatalf("start #%d: %v", i+1, err)
			}
			rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			conn, err := b.DialAgent(rctx, h)
			if err == nil {
				err = env.Ready(rctx, conn)
				conn.Close()
			}
			cancel()
			if kerr := b.Kill(ctx, h); kerr != nil {
				t.Fatal(kerr)
			}
			if err != nil {
				t.Fatalf("boot #%d: %v", i+1, err)
			}
		}
		console, _ := os.ReadFile(spec.ConsoleLog)
		if n := strings.Count(string(console), "banger-test: port="); n != 2 {
			t.Errorf("console log holds %d boots, want 2:\n%s", n, console)
		}
		vmmLog, _ := os.ReadFile(spec.VMMLog)
		if n := strings.Count(string(vmmLog), "banger: starting "); n != 2 {
			t.Errorf("vmm log holds %d starts, want 2:\n%s", n, vmmLog)
		}
	})

	t.Run("TapNICAndExtraDisk", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root for a tap")
		}
		if _, err := os.Stat("/dev/net/tun"); err != nil {
			t.Skip("no /dev/net/tun")
		}
		spec := newSpec(t, env)
		tap := "bgt" + spec.ID[1:]
		if len(tap) > 15 {
			tap = tap[:15]
		}
		if _, err := system.Run(ctx, "ip", "tuntap", "add", "dev", tap, "mode", "tap"); err != nil {
			t.Skipf("cannot make a tap: %v", err)
		}
		t.Cleanup(func() { _, _ = system.Run(context.Background(), "ip", "link", "del", tap) })
		extra := filepath.Join(filepath.Dir(spec.RuntimeDir), "extra.raw")
		if err := os.WriteFile(extra, make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		spec.NICs = []vmm.NIC{{Tap: tap, MAC: "02:ba:00:00:00:42"}}
		spec.Disks = []vmm.Disk{{Path: extra, Format: "raw", ReadOnly: true}}
		h := startVM(t, b, spec)
		rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		conn, err := b.DialAgent(rctx, h)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// ReadyLine names the root disk's content: /dev/vda is still the
		// root with a second disk attached.
		if err := env.Ready(rctx, conn); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("SurvivesStarterExit", func(t *testing.T) {
		// The process that starts a VM (the daemon) exits; the VM runs
		// on, and another process (the next daemon) finds it from the
		// handle, reaches its agent port and kills it.
		spec := newSpec(t, env)
		js, err := json.Marshal(spec)
		if err != nil {
			t.Fatal(err)
		}
		out, err := system.RunOpts(ctx, system.Opts{Env: []string{starterEnv + "=" + string(js)}}, os.Args[0])
		if err != nil {
			t.Fatalf("starter: %v", err)
		}
		var h vmm.Handle
		if err := json.Unmarshal(out, &h); err != nil {
			t.Fatalf("starter output %q: %v", out, err)
		}
		t.Cleanup(func() { _ = b.Kill(context.Background(), h) })
		time.Sleep(500 * time.Millisecond)
		if st := b.Status(ctx, h); st != vmm.StateRunning {
			t.Fatalf("VM after its starter exited: %s", st)
		}
		rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		conn, err := b.DialAgent(rctx, h)
		if err != nil {
			t.Fatal(err)
		}
		err = env.Ready(rctx, conn)
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Kill(ctx, h); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		defer wcancel()
		if err := b.WaitExit(wctx, h); err != nil {
			t.Fatalf("WaitExit: %v", err)
		}
		if st := b.Status(ctx, h); st != vmm.StateExited {
			t.Errorf("after Kill: %s", st)
		}
	})

	t.Run("RuntimeDirInUse", func(t *testing.T) {
		spec := newSpec(t, env)
		startVM(t, b, spec)
		other := spec
		other.ID = spec.ID + "x"
		if h, err := b.Start(ctx, other); err == nil {
			_ = b.Kill(ctx, h)
			t.Fatal("second VM on a runtime dir in use started")
		} else if !errors.Is(err, errdefs.ErrConflict) {
			t.Errorf("second VM on the same runtime dir: %v, want ErrConflict", err)
		}
		// The first VM's sockets survive the failed start's cleanup.
		for _, s := range []string{qemu.QMPSocket(spec.RuntimeDir), qemu.AgentSocket(spec.RuntimeDir)} {
			if _, err := os.Stat(s); err != nil {
				t.Errorf("live VM's socket removed: %v", err)
			}
		}
	})
}

// TestMeasure reports start-up figures (run with -v): one round per
// guest, or BANGER_MEASURE rounds.
func TestMeasure(t *testing.T) {
	b := needQEMU(t)
	rounds := 1
	if n, err := strconv.Atoi(os.Getenv("BANGER_MEASURE")); err == nil && n > 0 {
		rounds = n
	}
	guests := []struct {
		name string
		env  func(testing.TB) vmmtest.Env
	}{
		{"busybox", vmmtest.BusyboxGuest},
		{"agent", vmmtest.AgentGuest},
	}
	for _, g := range guests {
		t.Run(g.name, func(t *testing.T) {
			env := g.env(t)
			for i := 0; i < rounds; i++ {
				measureOnce(t, b, env, i+1)
			}
		})
	}
}

func measureOnce(t *testing.T, b *qemu.Backend, env vmmtest.Env, round int) {
	spec := newSpec(t, env)
	t0 := time.Now()
	h, err := b.Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Kill(context.Background(), h)
	qmpUp := time.Since(t0)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var conn net.Conn
	for {
		// The agent's Ready needs a fresh connection per attempt.
		conn, err = b.DialAgent(ctx, h)
		if err == nil {
			err = env.Ready(ctx, conn)
			conn.Close()
		}
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	ready := time.Since(t0)
	if err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	if err := b.Kill(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	gone := time.Since(t1)
	if st := b.Status(context.Background(), h); st != vmm.StateExited {
		t.Errorf("after Kill: %s", st)
	}
	if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(h.PID))); err == nil {
		if st, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(h.PID), "cmdline")); strings.Contains(string(st), spec.RuntimeDir) {
			t.Errorf("pid %d still runs after Kill", h.PID)
		}
	}
	t.Logf("round %d: start -> QMP answers %v; start -> guest ready %v; Kill -> gone %v",
		round, qmpUp.Round(time.Millisecond), ready.Round(time.Millisecond), gone.Round(time.Millisecond))
	if round == 1 {
		console, _ := os.ReadFile(spec.ConsoleLog)
		t.Logf("console of round 1:\n%s", console)
	}
}
