package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-sh/banger/api"
)

func waitFor(t *testing.T, what string, limit time.Duration, ok func() bool) {
	t.Helper()
	start := time.Now()
	for !ok() {
		if time.Since(start) > limit {
			t.Fatalf("%s: not within %s", what, limit)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// runOfVM returns the newest run of the VM named vm.
func runOfVM(t *testing.T, h *harness, vm string) (api.Run, bool) {
	t.Helper()
	var runs []api.Run
	if err := json.Unmarshal([]byte(h.must(t, "run", "ls", "--json", "--limit", "0")), &runs); err != nil {
		t.Fatal(err)
	}
	for _, r := range runs {
		if r.VM == vm {
			return r, true
		}
	}
	return api.Run{}, false
}

func waitRunEnded(t *testing.T, h *harness, vm string, limit time.Duration) api.Run {
	t.Helper()
	var r api.Run
	waitFor(t, "run of vm "+vm+" ended", limit, func() bool {
		var ok bool
		r, ok = runOfVM(t, h, vm)
		return ok && (r.State == api.RunDone || r.State == api.RunFailed || r.State == api.RunInterrupted || r.State == api.RunCancelled)
	})
	return r
}

// TestRunOwnedByDaemon: `vm run --rm REPO` is one daemon operation. Killing
// the CLI (kill -9) mid-command hangs the command up, and the daemon still
// keeps the edits and deletes the VM; killing the daemon mid-command leaves
// the run to the next daemon, which keeps the edits and deletes the VM.
// Nothing is left behind either way, and the record says what happened.
func TestRunOwnedByDaemon(t *testing.T) {
	h := env(t)
	repo := fixtureRepo(t)
	script := func(file string) []string {
		return []string{"sh", "-c", "echo kept > " + file + "; sync; echo started; exec sleep 300"}
	}

	t.Run("CLIKilled", func(t *testing.T) {
		var out syncBuffer
		p := h.start(t, &out, &out, append([]string{"vm", "run", "--rm", "--name", "killcli", repo, "--"}, script("cli.txt")...)...)
		waitFor(t, "the command started", 2*time.Minute, func() bool { return strings.Contains(out.String(), "started") })
		p.Signal(syscall.SIGKILL)
		p.Wait()
		r := waitRunEnded(t, h, "killcli", time.Minute)
		if r.State != api.RunDone || r.ExitCode != 129 || !r.VMDeleted || r.Patch == nil || r.Patch.Files != 1 {
			t.Fatalf("run after the CLI was killed: %+v", r)
		}
		show := h.must(t, "run", "show", r.ID)
		for _, want := range []string{"exit code:  129", "(deleted)", "cli.txt", "started"} {
			if !strings.Contains(show, want) {
				t.Errorf("run show lacks %q:\n%s", want, show)
			}
		}
		if patch := h.must(t, "run", "patch", r.ID); !strings.Contains(patch, "+++ b/cli.txt") || !strings.Contains(patch, "+kept") {
			t.Errorf("kept patch:\n%s", patch)
		}
		h.assertNoLeftovers(t)
	})

	t.Run("DaemonKilled", func(t *testing.T) {
		var out syncBuffer
		p := h.start(t, &out, &out, append([]string{"vm", "run", "--rm", "--name", "killd", repo, "--"}, script("daemon.txt")...)...)
		waitFor(t, "the command started", 2*time.Minute, func() bool { return strings.Contains(out.String(), "started") })
		old := daemonPID(t, h)
		syscall.Kill(old, syscall.SIGKILL)
		waitReaped(t, old)
		err := p.Wait()
		if code := exitCodeOf(err); code != 125 || !strings.Contains(out.String(), "banger run show") {
			t.Errorf("the CLI when its daemon died: exit %d\n%s", code, out.String())
		}
		// The next daemon (started by this command) finishes the run.
		r := waitRunEnded(t, h, "killd", 2*time.Minute)
		if r.State != api.RunInterrupted || !r.VMDeleted || r.Patch == nil || r.Patch.Files != 1 {
			t.Fatalf("run after the daemon was killed: %+v", r)
		}
		if patch := h.must(t, "run", "patch", r.ID); !strings.Contains(patch, "+++ b/daemon.txt") {
			t.Errorf("kept patch:\n%s", patch)
		}
		h.assertNoLeftovers(t)
	})

	t.Run("RmForgets", func(t *testing.T) {
		r, _ := runOfVM(t, h, "killcli")
		h.must(t, "run", "rm", r.ID)
		if _, code := h.run(t, nil, "run", "show", r.ID); code != 3 {
			t.Errorf("run show of a removed run: exit %d", code)
		}
		if _, err := os.Stat(filepath.Join(h.home, "state", "runs", r.ID)); !os.IsNotExist(err) {
			t.Errorf("run directory left: %v", err)
		}
	})
}

// TestRunTimeoutAndJSONRecord: --timeout ends the command (SIGTERM: 143)
// and the run's record says so.
func TestRunTimeout(t *testing.T) {
	h := env(t)
	r, code := h.run(t, nil, "vm", "run", "--rm", "--name", "tmo", "--timeout", "2s", "--", "sleep", "60")
	if code != 143 || !strings.Contains(r.stderr, "--timeout") {
		t.Fatalf("exit %d\n%s", code, r.stderr)
	}
	run, ok := runOfVM(t, h, "tmo")
	if !ok || !run.TimedOut || run.ExitCode != 143 || !run.VMDeleted {
		t.Fatalf("%+v", run)
	}
	h.assertNoLeftovers(t)
}

// TestRunReceiptAndReplay: a run's receipt names what it ran on; replaying
// a deterministic command reports a match, a nondeterministic one a
// difference.
func TestRunReceiptAndReplay(t *testing.T) {
	h := env(t)
	repo := fixtureRepo(t)
	r, code := h.run(t, nil, "vm", "run", "--rm", "--name", "rcpt", "--env", "TOKEN=secret", repo, "--", "sh", "-c", "echo replayed > out.txt; rm run.sh; exit 5")
	if code != 5 {
		t.Fatalf("exit %d\n%s", code, r.stderr)
	}
	run, _ := runOfVM(t, h, "rcpt")
	full := h.must(t, "run", "show", "--json", run.ID)
	var got api.Run
	if err := json.Unmarshal([]byte(full), &got); err != nil {
		t.Fatal(err)
	}
	rc := got.Receipt
	if rc == nil || rc.ImageDigest == "" || rc.Agent == "" || rc.VMM == "" || rc.VCPUs != 1 || rc.ExitCode != 5 ||
		rc.PatchSHA256 != got.Patch.SHA256 || rc.Base == nil || rc.Base.Commit == "" || rc.Base.Tree == "" ||
		len(rc.EnvKeys) != 1 || rc.EnvKeys[0] != "TOKEN" || strings.Contains(full, "secret") {
		t.Fatalf("receipt %+v\n%s", rc, full)
	}
	out, code := h.run(t, nil, "run", "replay", "--env", "TOKEN=secret", run.ID)
	if code != 0 || !strings.Contains(out.stdout, "exit code 5 / 5") || !strings.Contains(out.stdout, ": match") {
		t.Fatalf("replay: exit %d\n%s\n%s", code, out.stdout, out.stderr)
	}
	// The repository is as it was: no worktree left, no rescue file.
	if wt := git(t, repo, "worktree", "list"); strings.Count(wt, "\n") != 1 {
		t.Errorf("worktrees left: %s", wt)
	}

	h.must(t, "vm", "run", "--rm", "--name", "rcpt2", repo, "--", "sh", "-c", "date +%N > out.txt")
	run2, _ := runOfVM(t, h, "rcpt2")
	out, code = h.run(t, nil, "run", "replay", "--json", run2.ID)
	var res struct {
		Match bool `json:"match"`
	}
	if code != 1 || json.Unmarshal([]byte(out.stdout), &res) != nil || res.Match {
		t.Fatalf("replay of a nondeterministic run: exit %d\n%s", code, out.stdout)
	}
	h.assertNoLeftovers(t)
}
