package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/crashpoint"
)

// The crash-point tests kill bangerd with SIGKILL at each step of an
// operation (internal/crashpoint: the daemon is started with
// BANGER_TEST_CRASHPOINT=step) and restart it: the VM must then work or
// be gone with nothing left behind (the leak checker against the world
// before the step), and the other VMs must run on, untouched.

// cheapVM is the smallest VM shape the tests boot.
var cheapVM = []string{"--cold", "--vcpu", "1", "--mem", "256"}

// armDaemon restarts the daemon with the crash point armed and returns
// its pid.
func (h *harness) armDaemon(t *testing.T, point string) int {
	t.Helper()
	h.run(t, nil, "daemon", "stop")
	armed := *h
	armed.extraEnv = append(append([]string(nil), h.extraEnv...), crashpoint.Env+"="+point)
	armed.must(t, "daemon", "start")
	return daemonPID(t, h)
}

// recoverDaemon checks that the armed daemon pid died (the point was
// reached), then starts a daemon without it: its start-up reconcile is
// what the test judges.
func (h *harness) recoverDaemon(t *testing.T, pid int, point string) {
	t.Helper()
	// The client sees the connection drop as the killed daemon's files
	// close, a moment before the process is gone (longer on a busy host:
	// make test runs packages side by side).
	for deadline := time.Now().Add(10 * time.Second); procAlive(pid); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("crash point %s was not reached: the daemon (pid %d) lives", point, pid)
		}
	}
	waitReaped(t, pid)
	h.must(t, "daemon", "start")
}

// settle judges a VM after a crash and a restart: gone, or working (it
// runs a command, after a start if it is stopped, or in error saying why:
// an interrupted start). It returns what it
// found; with keep false a working VM is deleted.
func (h *harness) settle(t *testing.T, name string, keep bool) string {
	t.Helper()
	v, ok := showVM(t, h, name)
	if !ok {
		return "gone"
	}
	found := v.State
	switch v.State {
	case "running":
	case "stopped", "error": // error: with the reason (checked below), and it starts again
		if v.State == "error" && v.LastError == "" {
			t.Errorf("vm %s in error without a reason", name)
		}
		if r, code := h.run(t, nil, "vm", "start", name); code != 0 {
			t.Errorf("vm %s stopped after the crash does not start: exit %d %s", name, code, r.stderr)
			found += ", does not start"
		}
	default:
		t.Errorf("vm %s after the crash: state %q (%s): neither working nor gone", name, v.State, v.LastError)
	}
	if r, code := h.run(t, nil, "vm", "exec", name, "--", "true"); code != 0 && !strings.Contains(found, "not") {
		t.Errorf("vm %s (%s after the crash) does not run a command: exit %d %s", name, found, code, r.stderr)
	}
	if !keep {
		h.must(t, "vm", "delete", "--force", name)
	}
	return found + ", works"
}

// othersRunOn checks that a VM outside the crash kept its VMM process
// and still runs commands.
func othersRunOn(t *testing.T, h *harness, name string, pid int) {
	t.Helper()
	if v := vmInfo(t, h, name); v.State != "running" || v.PID != pid {
		t.Errorf("bystander vm %s: state %s pid %d, was running with pid %d", name, v.State, v.PID, pid)
	}
	execOut(t, h, name, "true")
}

// crashCase runs op with point armed, restarts the daemon and returns
// how long it took.
func crashCase(t *testing.T, h *harness, point string, op ...string) {
	t.Helper()
	pid := h.armDaemon(t, point)
	r, code := h.run(t, nil, op...)
	if code == 0 {
		t.Fatalf("%v succeeded: crash point %s not reached\n%s", op, point, r.stderr)
	}
	defer func() {
		if t.Failed() {
			t.Logf("%v: exit %d, stderr:\n%s", op, code, r.stderr)
		}
	}()
	h.recoverDaemon(t, pid, point)
}

func TestCrashPointsCreate(t *testing.T) {
	h, other := sharedVM(t)
	otherPID := vmInfo(t, h, other).PID
	for _, p := range []string{"create.row", "create.disk", "boot.net", "boot.vmm", "boot.saved", "boot.ready"} {
		t.Run(p, func(t *testing.T) {
			start := time.Now()
			before, err := h.snapshot()
			if err != nil {
				t.Fatal(err)
			}
			defer h.run(t, nil, "vm", "delete", "--force", "crash-c") // when the test fails half-way
			crashCase(t, h, p, append(append([]string{"vm", "create"}, cheapVM...), "crash-c")...)
			got := h.settle(t, "crash-c", false)
			h.checkLeaks(t, before, longLivedVMs)
			othersRunOn(t, h, other, otherPID)
			t.Logf("after a crash at %s: vm %s (%.1f s)", p, got, time.Since(start).Seconds())
		})
	}
}

func TestCrashPointsStart(t *testing.T) {
	h, other := sharedVM(t)
	otherPID := vmInfo(t, h, other).PID
	h.must(t, append(append([]string{"vm", "create"}, cheapVM...), "crash-s")...)
	defer h.run(t, nil, "vm", "delete", "--force", "crash-s")
	for _, p := range []string{"boot.net", "boot.vmm", "boot.saved", "boot.ready"} {
		t.Run(p, func(t *testing.T) {
			start := time.Now()
			h.must(t, "vm", "stop", "--force", "crash-s")
			before, err := h.snapshot()
			if err != nil {
				t.Fatal(err)
			}
			crashCase(t, h, p, "vm", "start", "crash-s")
			got := h.settle(t, "crash-s", true)
			if got == "gone" {
				t.Errorf("a crash during start deleted the vm")
			}
			h.must(t, "vm", "stop", "--force", "crash-s")
			h.checkLeaks(t, before, append([]string{"crash-s"}, longLivedVMs...))
			othersRunOn(t, h, other, otherPID)
			t.Logf("after a crash at %s: vm %s (%.1f s)", p, got, time.Since(start).Seconds())
		})
	}
}

func TestCrashPointsDelete(t *testing.T) {
	h, other := sharedVM(t)
	otherPID := vmInfo(t, h, other).PID
	for _, p := range []string{"delete.marked", "delete.killed", "delete.files", "delete.row"} {
		t.Run(p, func(t *testing.T) {
			start := time.Now()
			before, err := h.snapshot()
			if err != nil {
				t.Fatal(err)
			}
			defer h.run(t, nil, "vm", "delete", "--force", "crash-d") // when the test fails half-way
			h.must(t, append(append([]string{"vm", "create"}, cheapVM...), "crash-d")...)
			crashCase(t, h, p, "vm", "delete", "--force", "crash-d")
			got := h.settle(t, "crash-d", false)
			h.checkLeaks(t, before, longLivedVMs)
			othersRunOn(t, h, other, otherPID)
			t.Logf("after a crash at %s: vm %s (%.1f s)", p, got, time.Since(start).Seconds())
		})
	}
}

// TestCrashPointsExportApply: the daemon dies with the patch spooled, and
// with half of it sent: the user's tree is untouched; after the restart
// --apply brings the whole guest tree.
func TestCrashPointsExportApply(t *testing.T) {
	h, other := sharedVM(t)
	otherPID := vmInfo(t, h, other).PID
	repo := fixtureRepo(t)
	h.must(t, append(append([]string{"vm", "create"}, cheapVM...), "crash-e", "--workspace", repo, "--include-untracked")...)
	defer h.run(t, nil, "vm", "delete", "--force", "crash-e")
	// A patch large enough that half of it is on the wire: 64 KiB of text.
	edits := guestEdits + "\nseq 1 12000 > big.txt"
	if r, code := h.run(t, nil, "vm", "exec", "crash-e", "--", "sh", "-c", edits); code != 0 {
		t.Fatalf("guest edits: exit %d %s", code, r.stderr)
	}
	guest := guestTreeDigest(t, h, "crash-e")
	tree := func() string {
		return hostTreeDigest(t, repo) + git(t, repo, "status", "--porcelain") + git(t, repo, "rev-parse", "HEAD")
	}
	before := tree()
	for _, p := range []string{"export.spooled", "export.half"} {
		start := time.Now()
		crashCase(t, h, p, "workspace", "export", "crash-e", "--apply")
		if tree() != before {
			t.Fatalf("a crash at %s left the working tree changed", p)
		}
		if left, _ := filepath.Glob(filepath.Join(h.home, "state", "spool", "*")); len(left) > 0 {
			t.Errorf("export spools left after the restart: %v", left)
		}
		othersRunOn(t, h, other, otherPID)
		t.Logf("crash at %s: tree untouched (%.1f s)", p, time.Since(start).Seconds())
	}
	h.must(t, "workspace", "export", "crash-e", "--apply")
	if got := stripUntracked(hostTreeDigest(t, repo)); got != guest {
		t.Fatalf("--apply after the crashes: tree differs from the guest's:\n--- host\n%s--- guest\n%s", got, guest)
	}
}

// TestCrashPointsTemplateBuild: `image warm` of a shape no other test
// uses, the daemon killed at each step: no half template, no template
// VMM, no runtime dir; then the build succeeds.
func TestCrashPointsTemplateBuild(t *testing.T) {
	h, other := sharedVM(t)
	otherPID := vmInfo(t, h, other).PID
	warm := []string{"image", "warm", "default", "--vcpu", "1", "--mem", "200"}
	tplLeft := func() []string {
		var left []string
		ents, _ := os.ReadDir(filepath.Join(h.home, "cache", "templates"))
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".tmp-") {
				left = append(left, "cache/templates/"+e.Name())
			}
		}
		ents, _ = os.ReadDir(filepath.Join(h.home, "run", "tpl"))
		for _, e := range ents {
			left = append(left, "run/tpl/"+e.Name())
		}
		for _, p := range h.vmmProcs() {
			if strings.Contains(p, "tpl-") {
				left = append(left, "process "+p)
			}
		}
		return left
	}
	for _, p := range []string{"template.disk", "template.vmm", "template.snapshot", "template.commit"} {
		start := time.Now()
		before, err := h.snapshot()
		if err != nil {
			t.Fatal(err)
		}
		crashCase(t, h, p, warm...)
		if left := tplLeft(); len(left) > 0 {
			t.Errorf("after a crash at %s: template leftovers %v", p, left)
		}
		h.checkLeaks(t, before, longLivedVMs)
		othersRunOn(t, h, other, otherPID)
		t.Logf("crash at %s (%.1f s)", p, time.Since(start).Seconds())
	}
	start := time.Now()
	h.must(t, warm...)
	t.Logf("template built after the crashes in %.1f s", time.Since(start).Seconds())
}

// TestCrashPointsSpare: with vm.spares = 1, the daemon killed at each step
// of making a spare clone (in the background, after `image warm`): the
// restarted daemon (spares off) leaves no clone, tap, disk or process;
// with spares on again a spare is made and serves.
func TestCrashPointsSpare(t *testing.T) {
	h, other := sharedVM(t)
	otherPID := vmInfo(t, h, other).PID
	key := filepath.Base(warmTemplate(t, h)) // the template (spares are off)
	spares := func(n int) {
		if err := h.writeConfig(n); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		spares(0)
		h.run(t, nil, "daemon", "stop")
		h.must(t, "daemon", "start")
	}()
	for _, p := range []string{"spare.disk", "spare.tap", "spare.vmm"} {
		start := time.Now()
		before, err := h.snapshot()
		if err != nil {
			t.Fatal(err)
		}
		spares(1)
		pid := h.armDaemon(t, p)
		h.run(t, nil, "image", "warm", "default") // the spare is made after it answers, or during
		for deadline := time.Now().Add(90 * time.Second); procAlive(pid); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("crash point %s not reached in 90 s", p)
			}
		}
		spares(0)
		h.recoverDaemon(t, pid, p)
		h.checkLeaks(t, before, longLivedVMs)
		othersRunOn(t, h, other, otherPID)
		t.Logf("crash at %s while making a spare (%.1f s)", p, time.Since(start).Seconds())
	}
	spares(1)
	h.run(t, nil, "daemon", "stop")
	h.must(t, "daemon", "start")
	h.must(t, "image", "warm", "default")
	waitSpare(t, h, key)
}
