package vm

import (
	"context"
	"fmt"
	"io"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/errdefs"
)

// Exec starts a command in a running VM. The caller streams through the
// returned process (Wait, Signal, Resize).
func (m *Manager) Exec(ctx context.Context, name string, req api.ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (*agent.Process, error) {
	if len(req.Argv) == 0 {
		return nil, errdefs.InvalidArgument("exec: no command given")
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
