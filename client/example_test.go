package client_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/client"
	"github.com/banger-sh/banger/internal/system"
)

// Run a command in a fresh VM: its output streams to the writers, its exit
// code comes back, and the VM is gone when Run returns.
func ExampleClient_Run() {
	ctx := context.Background()
	c, err := client.FromEnv()
	if err != nil {
		log.Fatal(err)
	}
	r, err := c.Run(ctx, client.RunOptions{
		Command: []string{"sh", "-c", "echo hello from $(uname -s); exit 3"},
		Stdout:  os.Stdout,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit code:", r.ExitCode, "VM deleted:", r.VMDeleted)
	// Output:
	// hello from Linux
	// exit code: 3 VM deleted: true
}

// Run a command on a repository: its tracked files are shipped into the
// VM, and the edits the command made come back as a patch the daemon
// keeps (RunPatch) after the VM is gone.
func ExampleClient_Run_repository() {
	ctx := context.Background()
	c, err := client.FromEnv()
	if err != nil {
		log.Fatal(err)
	}
	repo := exampleRepo() // a git repository holding README.md
	defer os.RemoveAll(repo)
	r, err := c.Run(ctx, client.RunOptions{
		Repo:    repo,
		Command: []string{"sh", "-c", "echo 'edited in a VM' >> README.md && git status --short"},
		Stdout:  os.Stdout,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.RemoveRun(ctx, r.ID)
	fmt.Println("exit code:", r.ExitCode, "files changed:", r.Patch.Files)
	patch, err := c.RunPatch(ctx, r.ID)
	if err != nil {
		log.Fatal(err)
	}
	defer patch.Close()
	s := bufio.NewScanner(patch)
	for s.Scan() {
		if l := s.Text(); strings.HasPrefix(l, "+") && !strings.HasPrefix(l, "+++") {
			fmt.Println("added:", l[1:])
		}
	}
	// Output:
	//  M README.md
	// exit code: 0 files changed: 1
	// added: edited in a VM
}

// A VM that lives on: stream a command's stdin and stdout, write and read
// its files, delete it.
func ExampleClient_StartExec() {
	ctx := context.Background()
	c, err := client.FromEnv()
	if err != nil {
		log.Fatal(err)
	}
	vm, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "sdk-example"}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.DeleteVM(ctx, vm.Name, true)

	x, err := c.StartExec(ctx, vm.Name, api.ExecRequest{Argv: []string{"tr", "a-z", "A-Z"}},
		client.ExecIO{Stdin: strings.NewReader("piped through the guest\n"), Stdout: os.Stdout})
	if err != nil {
		log.Fatal(err)
	}
	exit, err := x.Wait()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit code:", exit.Code)

	note := "written by the SDK\n"
	if err := c.WriteFile(ctx, vm.Name, "/root/note.txt", strings.NewReader(note), int64(len(note)), 0o600); err != nil {
		log.Fatal(err)
	}
	f, err := c.ReadFile(ctx, vm.Name, "/root/note.txt", 1<<20)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s %s", f.Mode, f.Data)
	// Output:
	// PIPED THROUGH THE GUEST
	// exit code: 0
	// 0600 written by the SDK
}

// Cancelling the context interrupts the command (SIGINT); the daemon still
// exports and deletes the VM, and Run returns the record.
func ExampleClient_Run_cancel() {
	c, err := client.FromEnv()
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, err := c.Run(ctx, client.RunOptions{
		Command: []string{"sh", "-c", "echo started; exec sleep 600"},
		Stdout:  writerFunc(func(b []byte) { fmt.Print(string(b)); cancel() }),
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("signal:", r.Signal, "exit code:", r.ExitCode, "VM deleted:", r.VMDeleted)
	// Output:
	// started
	// signal: 2 exit code: 130 VM deleted: true
}

// Errors carry the API's classes.
func ExampleClient_GetVM_notFound() {
	c, err := client.FromEnv()
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.GetVM(context.Background(), "no-such-vm")
	fmt.Println(errors.Is(err, api.ErrNotFound))
	// Output: true
}

type writerFunc func([]byte)

func (f writerFunc) Write(b []byte) (int, error) { f(b); return len(b), nil }

// exampleRepo makes a one-commit git repository in a temporary directory.
func exampleRepo() string {
	dir, err := os.MkdirTemp("", "bgsdk-repo")
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "README.md"), []byte("# example\n"), 0o644); err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := system.Opts{Dir: dir, Env: []string{"GIT_AUTHOR_NAME=x", "GIT_AUTHOR_EMAIL=x@example.com", "GIT_COMMITTER_NAME=x", "GIT_COMMITTER_EMAIL=x@example.com"}}
	for _, argv := range [][]string{{"git", "init", "-q"}, {"git", "add", "."}, {"git", "commit", "-qm", "init"}} {
		if _, err := system.RunOpts(ctx, o, argv...); err != nil {
			log.Fatal(err)
		}
	}
	return dir
}
