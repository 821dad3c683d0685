package banger_test

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
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
