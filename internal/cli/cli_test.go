package cli

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-sh/banger/internal/system"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// isolate points banger at an empty BANGER_HOME and a daemon binary that
// does not exist, so nothing can start a real daemon.
func isolate(t *testing.T) string {
	t.Helper()
	home, err := os.MkdirTemp("", "bgcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	t.Setenv("BANGER_HOME", home)
	t.Setenv("BANGER_BANGERD", filepath.Join(home, "no-such-bangerd"))
	return home
}

func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), code
}

// TestHelpGolden pins `--help` of every command: the CLI's documentation
// changes only on purpose (go test ./internal/cli -update).
func TestHelpGolden(t *testing.T) {
	isolate(t)
	var paths [][]string
	var walk func(c *cobra.Command, prefix []string)
	walk = func(c *cobra.Command, prefix []string) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			p := append(append([]string{}, prefix...), sub.Name())
			paths = append(paths, p)
			walk(sub, p)
		}
	}
	walk(newRoot(&env{}), nil)
	paths = append(paths, []string{})
	for _, p := range paths {
		out, _, code := runCLI(t, append(p, "--help")...)
		if code != 0 {
			t.Errorf("%v --help: exit %d", p, code)
		}
		name := "help-" + strings.Join(append([]string{"banger"}, p...), "-") + ".golden"
		golden := filepath.Join("testdata", name)
		if *update {
			os.WriteFile(golden, []byte(out), 0o644)
			continue
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Errorf("%s: %v (run go test ./internal/cli -update)", golden, err)
			continue
		}
		if string(want) != out {
			t.Errorf("%v --help differs from %s:\n%s", p, golden, out)
		}
	}
	if len(paths) < 20 {
		t.Fatalf("only %d commands found", len(paths))
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	isolate(t)
	for _, args := range [][]string{
		{"bogus"},
		{"vm", "bogus"},
		{"vm", "create", "--bogus"},
		{"vm", "exec", "onlyname"},
		{"vm", "show"},
		{"vm", "run", "--rm", "uname"},
		{"vm", "set", "dev"},
		{"daemon", "start", "extra"},
	} {
		_, stderr, code := runCLI(t, args...)
		if code != ExitUsage || !strings.Contains(stderr, "--help") {
			t.Errorf("%v: exit %d, stderr %q", args, code, stderr)
		}
	}
}

func TestUnreachableDaemonNamesSocketAndFix(t *testing.T) {
	home := isolate(t)
	_, stderr, code := runCLI(t, "vm", "ls")
	if code != ExitUnavailable {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	sock := filepath.Join(home, "run", "bangerd.sock")
	if !strings.Contains(stderr, sock) || !strings.Contains(stderr, "banger daemon logs") {
		t.Fatalf("message does not name the socket and the fix:\n%s", stderr)
	}
	// vm run reports banger's own failure as 125.
	if _, _, code := runCLI(t, "vm", "run", "--", "true"); code != ExitRunFailure {
		t.Fatalf("vm run without a daemon: exit %d, want %d", code, ExitRunFailure)
	}
}

func TestCorruptConfigNamesFileLineKey(t *testing.T) {
	home := isolate(t)
	os.MkdirAll(filepath.Join(home, "config"), 0o755)
	cfg := filepath.Join(home, "config", "config.toml")
	os.WriteFile(cfg, []byte("[vm]\nvcpus = 2\nmemory = 3\n"), 0o644)
	_, stderr, code := runCLI(t, "doctor")
	if code == 0 || !strings.Contains(stderr, cfg+":3: vm.memory: unknown key") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}

func TestDoctorJSONRunsWithoutDaemon(t *testing.T) {
	isolate(t)
	out, stderr, code := runCLI(t, "doctor", "--json")
	if !strings.Contains(out, `"checks"`) || !strings.Contains(out, `"backend"`) {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
}

func TestVersionWithoutDaemon(t *testing.T) {
	isolate(t)
	out, _, code := runCLI(t, "version")
	if code != 0 || !strings.HasPrefix(out, "banger ") || strings.Contains(out, "bangerd") {
		t.Fatalf("exit %d: %q", code, out)
	}
}

func TestCompletionScripts(t *testing.T) {
	isolate(t)
	for _, sh := range []string{"bash", "zsh", "fish"} {
		out, _, code := runCLI(t, "completion", sh)
		if code != 0 || len(out) < 100 {
			t.Errorf("completion %s: exit %d, %d bytes", sh, code, len(out))
		}
	}
}

// TestSquattedRuntimeDirRefused: a runtime directory that another user
// made (or left open, or that is a symbolic link) may hold anyone's fake
// bangerd: banger refuses to talk to it, or to signal the pid in its
// lock file, instead of sending it the repository and taking its
// answers.
func TestSquattedRuntimeDirRefused(t *testing.T) {
	for _, tc := range []struct {
		name, reason string
		root         bool                                  // needs root (chown)
		setup        func(t *testing.T, run string) string // returns where the fake daemon listens
	}{
		{"other owner", "belongs to uid 65534", true, func(t *testing.T, run string) string {
			os.Mkdir(run, 0o777)
			os.Chmod(run, 0o777)
			os.Chown(run, 65534, 65534)
			return run
		}},
		{"open mode", "mode is 0777", false, func(t *testing.T, run string) string {
			os.Mkdir(run, 0o777)
			os.Chmod(run, 0o777)
			return run
		}},
		{"symlink", "symbolic link", false, func(t *testing.T, run string) string {
			dir := run + "-elsewhere"
			os.Mkdir(dir, 0o700)
			os.Symlink(dir, run)
			return dir
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("needs root to make a directory of another user")
			}
			home := isolate(t)
			dir := tc.setup(t, filepath.Join(home, "run"))
			var hits atomic.Int64
			ln, err := net.Listen("unix", filepath.Join(dir, "bangerd.sock"))
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				if r.URL.Path == "/v1/vms" {
					w.Write([]byte("[]"))
					return
				}
				w.Write([]byte(`{"host":"x","user":"-oProxyCommand=evil","key":"k","known_hosts":"k"}`))
			})}
			go srv.Serve(ln)
			defer srv.Close()
			// The squatter's lock file names a victim for 'daemon stop'.
			victim, err := system.Start(system.Opts{}, "sleep", "30")
			if err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { victim.Wait(); close(exited) }()
			defer func() { victim.Signal(syscall.SIGKILL); <-exited }()
			lock, err := os.Create(filepath.Join(dir, "bangerd.lock"))
			if err != nil {
				t.Fatal(err)
			}
			defer lock.Close()
			fmt.Fprintf(lock, "%d\n", victim.Pid())
			if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
				t.Fatal(err)
			}
			for _, args := range [][]string{{"vm", "ls"}, {"vm", "ssh", "dev", "--print"}, {"daemon", "status"}, {"daemon", "stop"}} {
				out, stderr, code := runCLI(t, args...)
				if args[0] == "vm" && (code == 0 || !strings.Contains(stderr, "refusing to use") || !strings.Contains(stderr, tc.reason)) {
					t.Errorf("%v: exit %d\n%s%s", args, code, out, stderr)
				}
			}
			if n := hits.Load(); n != 0 {
				t.Errorf("the fake daemon got %d requests", n)
			}
			select {
			case <-exited:
				t.Errorf("'daemon stop' signalled the pid in the squatter's lock file")
			case <-time.After(100 * time.Millisecond):
			}
		})
	}
}
