package system

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/banger-sh/banger/internal/errdefs"
)

// Scope says who needs a program.
type Scope string

const (
	ScopeRun   Scope = "run"   // bangerd or banger, to run VMs and workspaces
	ScopeBuild Scope = "build" // building guest images
	ScopeDev   Scope = "dev"   // only building banger from source and its tests
	ScopeSelf  Scope = "self"  // banger's own binaries
	// ScopeOpt: used when present, not in Debian: doctor reports it,
	// setup-host does not install it, Missing and CheckInstalled skip it.
	ScopeOpt Scope = "opt"
)

// Program is one external program banger runs, with the Debian package
// that provides it.
type Program struct {
	Name    string  `json:"name"`
	Package string  `json:"package"` // "" for banger's own binaries and the Go toolchain
	Scopes  []Scope `json:"scopes"`
	Need    string  `json:"need"` // what needs it
}

//go:embed programs.txt
var programsTxt string

var (
	regOnce sync.Once
	reg     []Program
	regErr  error
)

// parseRegistry reads programs.txt: '#' comments, then one program a line:
// name, package ("-" for none), scope, and the rest of the line saying what
// needs it.
func parseRegistry(txt string) ([]Program, error) {
	var out []Program
	seen := map[string]bool{}
	for i, line := range strings.Split(txt, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 {
			return nil, fmt.Errorf("programs.txt:%d: want: program package scope what-needs-it", i+1)
		}
		p := Program{Name: f[0], Package: f[1], Need: strings.Join(f[3:], " ")}
		if p.Package == "-" {
			p.Package = ""
		}
		for _, sc := range strings.Split(f[2], ",") {
			switch Scope(sc) {
			case ScopeRun, ScopeBuild, ScopeDev, ScopeSelf, ScopeOpt:
				p.Scopes = append(p.Scopes, Scope(sc))
			default:
				return nil, fmt.Errorf("programs.txt:%d: %s: unknown scope %q", i+1, p.Name, sc)
			}
		}
		if p.Package == "" && !p.Self() && !p.Optional() && p.Name != "go" {
			return nil, fmt.Errorf("programs.txt:%d: %s has no Debian package", i+1, p.Name)
		}
		if seen[p.Name] {
			return nil, fmt.Errorf("programs.txt:%d: %s is listed twice", i+1, p.Name)
		}
		seen[p.Name] = true
		out = append(out, p)
	}
	return out, nil
}

func registry() []Program {
	regOnce.Do(func() { reg, regErr = parseRegistry(programsTxt) })
	if regErr != nil {
		panic("internal/system: " + regErr.Error()) // a broken build, caught by TestRegistryParses
	}
	return reg
}

// File reports whether p is a file banger needs rather than a program it
// runs (its name is an absolute path).
func (p Program) File() bool { return strings.HasPrefix(p.Name, "/") }

// Self reports whether p is one of banger's own binaries.
func (p Program) Self() bool { return slices.Contains(p.Scopes, ScopeSelf) }

// Optional reports whether p is used only when present (scope opt).
func (p Program) Optional() bool { return slices.Contains(p.Scopes, ScopeOpt) }

// In reports whether p is needed in any of scopes.
func (p Program) In(scopes ...Scope) bool {
	for _, s := range scopes {
		if slices.Contains(p.Scopes, s) {
			return true
		}
	}
	return false
}

// Programs returns the registry, optionally only the given scopes.
func Programs(scopes ...Scope) []Program {
	var out []Program
	for _, p := range registry() {
		if len(scopes) == 0 || p.In(scopes...) {
			out = append(out, p)
		}
	}
	return out
}

// Lookup returns the registry entry of a program, by name or path.
func Lookup(name string) (Program, bool) {
	base := filepath.Base(name)
	for _, p := range registry() {
		if p.Name == base && !p.File() {
			return p, true
		}
	}
	// Patterns (banger's own test binaries, *.test) come last.
	for _, p := range registry() {
		if ok, _ := filepath.Match(p.Name, base); ok && p.Self() && strings.ContainsAny(p.Name, "*?[") {
			return p, true
		}
	}
	return Program{}, false
}

// ErrUnregistered means code asked to run a program that is not in
// programs.txt: a bug in banger, not in the host.
var ErrUnregistered = errors.New("not in banger's program registry (internal/system/programs.txt)")

// MissingError says which registered programs are not installed, and
// which packages provide them. It is of class errdefs.ErrMissingDependency.
type MissingError struct {
	Programs []Program
}

func (e *MissingError) Error() string {
	var names []string
	for _, p := range e.Programs {
		names = append(names, p.Name)
	}
	msg := "missing programs: " + strings.Join(names, ", ")
	if pk := e.Packages(); len(pk) > 0 {
		msg += " (install: apt-get install " + strings.Join(pk, " ") + ")"
	}
	return msg
}

// Is makes errors.Is(err, errdefs.ErrMissingDependency) true.
func (e *MissingError) Is(target error) bool { return target == errdefs.ErrMissingDependency }

// Packages lists the Debian packages that provide the missing programs.
func (e *MissingError) Packages() []string {
	var out []string
	for _, p := range e.Programs {
		if p.Package != "" && !slices.Contains(out, p.Package) {
			out = append(out, p.Package)
		}
	}
	return out
}

// sbinDirs are searched after PATH: a user's PATH often lacks them, and
// several programs banger runs live there (mkfs.ext4, depmod, debugfs).
var sbinDirs = []string{"/usr/local/sbin", "/usr/sbin", "/sbin"}

// resolve finds the executable for name (a registered program's name or a
// path to one) in PATH, then in the sbin directories.
func resolve(name string) (string, error) {
	if _, ok := Lookup(name); !ok {
		return "", fmt.Errorf("%s: %w", name, ErrUnregistered)
	}
	prog, _ := Lookup(name)
	missing := func() error {
		if strings.Contains(name, "/") {
			return fmt.Errorf("%s: %w: %w", name, &MissingError{Programs: []Program{prog}}, exec.ErrNotFound)
		}
		return fmt.Errorf("%w: %w", &MissingError{Programs: []Program{prog}}, exec.ErrNotFound)
	}
	if strings.Contains(name, "/") {
		if _, err := exec.LookPath(name); err != nil {
			return "", missing()
		}
		return name, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range sbinDirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", missing()
}

// Missing returns the registered programs of the given scopes (all when
// none are given; banger's own binaries and optional programs never) that
// lookPath cannot find.
// lookPath nil means this host's.
func Missing(lookPath func(string) (string, error), scopes ...Scope) []Program {
	if lookPath == nil {
		lookPath = func(n string) (string, error) { return resolve(n) }
	}
	var out []Program
	for _, p := range Programs(scopes...) {
		switch {
		case p.Self(), p.Optional():
		case p.File():
			if _, err := os.Stat(p.Name); err != nil {
				out = append(out, p)
			}
		default:
			if _, err := lookPath(p.Name); err != nil {
				out = append(out, p)
			}
		}
	}
	return out
}

// CheckInstalled returns a *MissingError naming every program of the
// given scopes that is not installed, or nil.
func CheckInstalled(scopes ...Scope) error {
	if m := Missing(nil, scopes...); len(m) > 0 {
		return &MissingError{Programs: m}
	}
	return nil
}
