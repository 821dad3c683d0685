package vm

import (
	"context"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/errdefs"
)

// Exec starts a command in a running VM. The caller streams through the
// returned process (Wait, Signal, Resize).
func (m *Manager) Exec(ctx context.Context, name string, req api.ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (*agent.Process, error) {
	if err := CheckExec(req); err != nil {
		return nil, err
	}
	r, err := m.get(ctx, name)
	if err != nil {
		return nil, err
	}
	if st := m.derive(ctx, r); st != StateRunning {
		return nil, errdefs.NotRunning(fmt.Sprintf("vm %s is %s, not running", r.row.Name, st))
	}
	c, err := m.agent(ctx, r)
	if err != nil {
		return nil, err
	}
	p, err := c.Exec(ctx, agent.ExecRequest{
		Argv: req.Argv, Env: req.Env, Dir: req.Dir, TTY: req.TTY, Rows: req.Rows, Cols: req.Cols,
		Stdin: stdin, Stdout: stdout, Stderr: stderr,
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// CheckExec checks an exec request before anything runs: a command whose
// program is named, no NUL anywhere (the guest's execve would cut the
// string there), environment entries KEY=VALUE, and an absolute working
// directory.
func CheckExec(req api.ExecRequest) error {
	if len(req.Argv) == 0 {
		return errdefs.InvalidArgument("exec: no command given")
	}
	if req.Argv[0] == "" {
		return errdefs.InvalidArgument("exec: argv[0] is empty: no program named")
	}
	for i, a := range req.Argv {
		if strings.ContainsRune(a, 0) {
			return errdefs.InvalidArgument(fmt.Sprintf("exec: argv[%d] holds a NUL byte", i))
		}
	}
	for _, e := range req.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" || strings.ContainsRune(e, 0) {
			return errdefs.InvalidArgument(fmt.Sprintf("exec: env %q: want KEY=VALUE (no NUL)", e))
		}
	}
	if req.Dir != "" && (!path.IsAbs(req.Dir) || strings.ContainsRune(req.Dir, 0)) {
		return errdefs.InvalidArgument(fmt.Sprintf("exec: working dir (--cwd) %q: want an absolute path in the guest", req.Dir))
	}
	return nil
}
