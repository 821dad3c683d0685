package client

import (
	"context"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/workspace"
)

// Ship builds a work disk of repo's tracked files (with their uncommitted
// edits; untracked ones too with includeUntracked) as the calling user
// and uploads it to the daemon as an open file descriptor; the returned
// workspace goes into a CreateVMRequest or RunRequest. path is where the
// repository goes in the guest ("": /root/repo).
func (c *Client) Ship(ctx context.Context, repo string, includeUntracked bool, path string) (*api.WorkspaceSpec, error) {
	ws, _, err := workspace.Ship(ctx, repo, workspace.ShipOptions{IncludeUntracked: includeUntracked, Path: path, TmpDir: c.tmp},
		func(f *os.File) (string, error) {
			up, err := c.Upload(ctx, f)
			return up.Token, err
		})
	return ws, err
}

// RunOptions describe a run for Run: a command in a fresh VM.
type RunOptions struct {
	Command []string
	// Repo, when set, is shipped to /root/repo (or Path) and the command
	// runs there; its edits are kept by the daemon (RunPatch).
	Repo             string
	IncludeUntracked bool
	Path             string
	// VM is how to create the VM (name, image, shape, network); its
	// Workspace is set from Repo.
	VM     api.CreateVMRequest
	Env    []string // KEY=VALUE
	Dir    string   // working directory in the guest
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Keep leaves the VM running (else it is deleted at the end).
	Keep bool
	// Timeout ends the command (SIGTERM, then SIGKILL) when it runs
	// longer; 0: no limit.
	Timeout time.Duration
	// Progress, if set, is told the create's phases.
	Progress Progress
}

// Run ships Repo (if any), runs Command in a fresh VM with the given
// streams and returns the run's record once the daemon has exported the
// edits and deleted the VM. Cancelling ctx interrupts the command
// (SIGINT); the daemon still keeps the edits and deletes the VM, and Run
// returns the record.
func (c *Client) Run(ctx context.Context, o RunOptions) (api.Run, error) {
	req := api.RunRequest{VM: o.VM, Exec: api.ExecRequest{Argv: o.Command, Env: o.Env, Dir: o.Dir},
		Keep: o.Keep, TimeoutSeconds: int((o.Timeout + time.Second - 1) / time.Second)}
	if o.Repo != "" {
		ws, err := c.Ship(ctx, o.Repo, o.IncludeUntracked, o.Path)
		if err != nil {
			return api.Run{}, err
		}
		req.VM.Workspace = ws
		if req.Exec.Dir == "" {
			req.Exec.Dir = ws.Path
		}
	}
	s, err := c.StartRun(context.WithoutCancel(ctx), req, RunIO{Stdin: o.Stdin, Stdout: o.Stdout, Stderr: o.Stderr, Progress: o.Progress})
	if err != nil {
		return api.Run{}, err
	}
	stop := context.AfterFunc(ctx, func() { s.Signal(int(syscall.SIGINT)) })
	defer stop()
	return s.Wait()
}
