package system

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/banger-sh/banger/internal/errdefs"
)

func TestRegistryParses(t *testing.T) {
	progs, err := parseRegistry(programsTxt)
	if err != nil {
		t.Fatal(err)
	}
	if len(progs) < 20 {
		t.Fatalf("only %d programs", len(progs))
	}
	for _, p := range progs {
		if p.Need == "" || len(p.Scopes) == 0 {
			t.Errorf("%+v: incomplete", p)
		}
	}
	for _, bad := range []string{
		"git\n",                          // too few fields
		"git git sometimes needs it\n",   // bad scope
		"git - run needs it\n",           // no package
		"git git run a\ngit git run b\n", // twice
		"git git run,nope because\n",     // one bad scope of two
	} {
		if _, err := parseRegistry(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestUnregisteredProgramIsRefused(t *testing.T) {
	ctx := context.Background()
	_, err := Run(ctx, "banger-no-such-registered-program")
	if !errors.Is(err, ErrUnregistered) {
		t.Fatalf("Run: %v", err)
	}
	if _, err := LookPath("/usr/bin/env"); !errors.Is(err, ErrUnregistered) {
		t.Fatalf("LookPath by path: %v", err)
	}
	if _, err := StartDetached(Detached{Argv: []string{"env"}}); !errors.Is(err, ErrUnregistered) {
		t.Fatalf("StartDetached: %v", err)
	}
	if _, err := Start(Opts{}, "env"); !errors.Is(err, ErrUnregistered) {
		t.Fatalf("Start: %v", err)
	}
	// A registered one runs, by name and by path.
	if out, err := Run(ctx, "sh", "-c", "echo ok"); err != nil || string(out) != "ok\n" {
		t.Fatalf("sh: %q %v", out, err)
	}
	p, err := LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Run(ctx, p, "-c", "true"); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
}

// TestMissingProgramNamesItsPackage: a registered program that is not
// installed fails with a MissingError of class ErrMissingDependency that
// names the Debian package, and still matches exec.ErrNotFound.
func TestMissingProgramNamesItsPackage(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	old := sbinDirs
	sbinDirs = nil
	defer func() { sbinDirs = old }()
	_, err := Run(context.Background(), "depmod", "-a")
	var me *MissingError
	if !errors.As(err, &me) || !errors.Is(err, errdefs.ErrMissingDependency) || !IsNotFound(err) {
		t.Fatalf("err %v (%T)", err, err)
	}
	if !strings.Contains(err.Error(), "apt-get install kmod") {
		t.Fatalf("message %q does not name the package", err)
	}
	err = CheckInstalled(ScopeBuild)
	if !errors.As(err, &me) || len(me.Programs) < 5 {
		t.Fatalf("CheckInstalled with an empty PATH: %v", err)
	}
	for _, want := range []string{"debootstrap", "kmod", "util-linux", "dpkg"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %s", err, want)
		}
	}
}

func TestMissingUsesLookPathAndSkipsSelf(t *testing.T) {
	m := Missing(func(n string) (string, error) {
		if n == "git" {
			return "", exec.ErrNotFound
		}
		return "/x/" + n, nil
	})
	if len(m) != 1 || m[0].Name != "git" || m[0].Package != "git" {
		t.Fatalf("%+v", m)
	}
	none := Missing(func(string) (string, error) { return "", exec.ErrNotFound }, ScopeSelf)
	if len(none) != 0 {
		t.Fatalf("self binaries counted: %+v", none)
	}
}

// TestNice: Opts.Nice lowers the program's priority (nice(1) reads it
// back; the sleep leaves time for the setpriority after the start).
func TestNice(t *testing.T) {
	out, err := RunOpts(context.Background(), Opts{Nice: 19}, "sh", "-c", "sleep 0.3; nice")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "19" {
		t.Fatalf("nice value %q, want 19", got)
	}
	out, err = Run(context.Background(), "sh", "-c", "nice")
	if err != nil || strings.TrimSpace(string(out)) == "19" {
		t.Fatalf("without Nice: %q %v (want the caller's, not 19)", out, err)
	}
}
