package client_test

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/system"
)

// TestImportFromAnotherModule proves that a program outside this module
// can use the SDK the way the README says: its own go.mod requiring
// github.com/banger-sh/banger with a replace directive to a checkout. It
// builds such a program and runs it against no daemon: it must compile,
// and the error it prints must be the SDK's own class.
func TestImportFromAnotherModule(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Go program: not run with -short")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	gomod := "module example.com/agent\n\ngo 1.26\n\nrequire github.com/banger-sh/banger v0.0.0\n\nreplace github.com/banger-sh/banger => " + root + "\n"
	prog := `package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/client"
)

func main() {
	c := client.New("/nonexistent/bangerd.sock")
	_, err := c.ListVMs(context.Background())
	var ue *client.UnreachableError
	fmt.Println(errors.As(err, &ue), errors.Is(err, api.ErrNotFound))
}
`
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"go.mod": []byte(gomod), "main.go": []byte(prog), "go.sum": sum} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	o := system.Opts{Dir: dir, Env: []string{"GOFLAGS=-mod=mod", "GOWORK=off"}}
	if _, err := system.RunOpts(ctx, o, goBin, "mod", "tidy"); err != nil {
		t.Fatalf("go mod tidy in a module that requires the SDK: %v", err)
	}
	if _, err := system.RunOpts(ctx, o, goBin, "build", "-o", "banger-sdk-example", "."); err != nil {
		t.Fatalf("build a program that imports the SDK: %v", err)
	}
	out, err := system.RunOpts(ctx, o, filepath.Join(dir, "banger-sdk-example"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "true false" {
		t.Errorf("program output %q, want %q (an unreachable daemon is an *UnreachableError)", got, "true false")
	}
}
