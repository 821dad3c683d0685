package banger_test

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/banger-sh/banger/internal/system"
)

// execAllowed lists the only packages that may import os/exec: every
// external program banger runs goes through internal/system, so that each
// call has an argv list, LC_ALL=C, and errors carrying argv, exit code and
// stderr.
var execAllowed = map[string]bool{
	"internal/system": true,
}

func TestOnlySystemImportsOSExec(t *testing.T) {
	fset := token.NewFileSet()
	checked := 0
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); n == ".git" || n == "bin" || n == "build" || n == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		checked++
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if p == "os/exec" && !execAllowed[filepath.Dir(path)] {
				t.Errorf("%s imports os/exec: run programs through banger/internal/system", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 20 {
		t.Fatalf("checked only %d files: is the walk broken?", checked)
	}
}

// runCalls maps the internal/system functions that run a program to the
// index of the argument that names it.
var runCalls = map[string]int{"Run": 1, "RunOpts": 2, "Start": 1, "LookPath": 0, "Exec": 0}

// TestProgramsAreRegistered finds every call that names the program it runs
// with a literal (system.Run(ctx, "git", ...), system.Exec([]string{"ssh",
// ...}), Detached{Argv: []string{...}}, append([]string{"git"}, ...)) and
// checks the program is in internal/system/programs.txt. Programs named at
// run time are checked when they run: internal/system refuses any program
// the registry does not list.
func TestProgramsAreRegistered(t *testing.T) {
	fset := token.NewFileSet()
	found := 0
	first := func(e ast.Expr) (string, bool) {
		switch v := e.(type) {
		case *ast.BasicLit:
			s, err := strconv.Unquote(v.Value)
			return s, err == nil
		case *ast.CompositeLit:
			if len(v.Elts) > 0 {
				if b, ok := v.Elts[0].(*ast.BasicLit); ok && b.Kind == token.STRING {
					s, err := strconv.Unquote(b.Value)
					return s, err == nil
				}
			}
		case *ast.CallExpr:
			if id, ok := v.Fun.(*ast.Ident); ok && id.Name == "append" && len(v.Args) > 0 {
				if c, ok := v.Args[0].(*ast.CompositeLit); ok && len(c.Elts) > 0 {
					if b, ok := c.Elts[0].(*ast.BasicLit); ok && b.Kind == token.STRING {
						s, err := strconv.Unquote(b.Value)
						return s, err == nil
					}
				}
			}
		}
		return "", false
	}
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); n == ".git" || n == "bin" || n == "build" || n == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasPrefix(path, "internal/system/") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			var prog string
			var ok bool
			switch v := n.(type) {
			case *ast.CallExpr:
				sel, isSel := v.Fun.(*ast.SelectorExpr)
				if !isSel {
					return true
				}
				if x, isID := sel.X.(*ast.Ident); !isID || x.Name != "system" {
					return true
				}
				i, runs := runCalls[sel.Sel.Name]
				if !runs || i >= len(v.Args) {
					return true
				}
				prog, ok = first(v.Args[i])
			case *ast.CompositeLit:
				sel, isSel := v.Type.(*ast.SelectorExpr)
				if !isSel || sel.Sel.Name != "Detached" {
					return true
				}
				if x, isID := sel.X.(*ast.Ident); !isID || x.Name != "system" {
					return true
				}
				for _, el := range v.Elts {
					if kv, isKV := el.(*ast.KeyValueExpr); isKV {
						if k, isID := kv.Key.(*ast.Ident); isID && k.Name == "Argv" {
							prog, ok = first(kv.Value)
						}
					}
				}
			}
			if ok {
				found++
				if _, reg := system.Lookup(prog); !reg {
					t.Errorf("%s: runs %q, which internal/system/programs.txt does not list (add it with its Debian package)", fset.Position(n.Pos()), prog)
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if found < 40 {
		t.Fatalf("found only %d program names: is the walk broken?", found)
	}
}

// TestSetupHostInstallsTheRegistry: scripts/setup-host installs exactly the
// packages of the registry (it reads programs.txt itself; this checks that
// its reading agrees with internal/system's).
func TestSetupHostInstallsTheRegistry(t *testing.T) {
	out, err := system.Run(context.Background(), "sh", "-c", "scripts/setup-host --print-packages")
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(string(out))
	var want []string
	for _, p := range system.Programs() {
		if p.Package != "" && !slices.Contains(want, p.Package) {
			want = append(want, p.Package)
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("setup-host installs %v\nthe registry needs %v", got, want)
	}
}

// TestGoModTidy: go.mod and go.sum are what `go mod tidy` makes of the
// code (direct requirements not marked indirect, none unused).
func TestGoModTidy(t *testing.T) {
	out, err := system.Run(context.Background(), "go", "mod", "tidy", "-diff")
	if err != nil {
		t.Fatalf("go.mod/go.sum are not tidy (run go mod tidy):\n%s\n%v", out, err)
	}
}

// backendWords are the words of one backend's disk format and control
// protocol: above internal/vmm (the backends) and internal/disk (the
// copy-on-write strategies) the code is backend-neutral, so that another
// backend (Firecracker: raw disks, an HTTP API) fits without touching
// the VM manager, templates or daemon.
var backendWords = []string{"qcow2", "qmp", "qemu-img"}

// neutralExempt lists the only places outside internal/vmm/... and
// internal/disk that may name them, each with its reason.
var neutralExempt = map[string]string{
	// Benchmarks banger's VM life against raw QEMU started by hand: it
	// builds QEMU's own disk and argv on purpose.
	"bench/vmrun": "compares banger with a hand-started QEMU",
}

func TestBackendNeutralWords(t *testing.T) {
	checked := 0
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			n := d.Name()
			if n == ".git" || n == "bin" || n == "build" || n == "testdata" ||
				path == "internal/vmm" || path == "internal/disk" || neutralExempt[path] != "" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		checked++
		for i, line := range strings.Split(string(b), "\n") {
			l := strings.ToLower(line)
			for _, w := range backendWords {
				if strings.Contains(l, w) {
					t.Errorf("%s:%d names %q: backend-specific code belongs in internal/vmm/<backend> or internal/disk: %s", path, i+1, w, strings.TrimSpace(line))
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 {
		t.Fatalf("checked only %d files: is the walk broken?", checked)
	}
	for dir := range neutralExempt {
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("exempt %s: %v (remove it from neutralExempt)", dir, err)
		}
	}
}
