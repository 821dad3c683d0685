// Package cli is banger's command line: one file per command group, each a
// thin layer over internal/client. People get aligned text; programs get
// --json. Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 already
// exists or conflict, 5 daemon unavailable; `vm run` and `vm exec` pass the
// guest command's exit code through untouched and use 125 for banger's own
// failures (as docker run does).
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-sh/banger/internal/config"
	"github.com/banger-sh/banger/internal/errdefs"
	hints "github.com/banger-sh/banger/internal/hint"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/workspace"
)

// Exit codes for banger's own outcomes.
const (
	ExitOK          = 0
	ExitError       = 1
	ExitUsage       = 2
	ExitNotFound    = 3
	ExitConflict    = 4
	ExitUnavailable = 5
	ExitRunFailure  = 125 // vm run / vm exec: banger failed, not the command
)

// usageError marks bad command lines (exit 2).
type usageError struct{ error }

// exitError carries an exit code chosen by a command (the guest's).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit code %d", e.code) }

// env is what every command needs.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	layout         paths.Layout
	cfg            config.Config
	cfgErr         error
}

// Main runs the CLI with args (without the program name) and returns the
// process exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code := Run(ctx, args, os.Stdin, os.Stdout, os.Stderr)
	// A ship's disk may still be on its way into the work-disk cache:
	// let it finish, or remove it (never leave it behind).
	workspace.Drain(5 * time.Second)
	return code
}

// Run is Main with the context and streams passed in (tests).
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	l, err := paths.FromEnv()
	if err != nil {
		fmt.Fprintf(stderr, "banger: %v\n", err)
		return ExitError
	}
	e.layout = l
	e.cfg, e.cfgErr = config.Load(l.ConfigFile())

	root := newRoot(e)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	var xe exitError
	if errors.As(err, &xe) {
		return xe.code
	}
	var re *runError
	if errors.As(err, &re) {
		fmt.Fprintf(stderr, "banger: %v\n", re.error)
		if h := hint(re.error, e); h != "" {
			fmt.Fprintf(stderr, "hint: %s\n", h)
		}
		return ExitRunFailure
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "banger: %v\n", err)
		if cmd != nil {
			fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		}
		return ExitUsage
	}
	fmt.Fprintf(stderr, "banger: %v\n", err)
	if h := hint(err, e); h != "" {
		fmt.Fprintf(stderr, "hint: %s\n", h)
	}
	return exitCode(err)
}

func exitCode(err error) int {
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return ExitNotFound
	case errors.Is(err, errdefs.ErrAlreadyExists), errors.Is(err, errdefs.ErrConflict):
		return ExitConflict
	case errors.Is(err, errdefs.ErrUnavailable):
		return ExitUnavailable
	}
	return ExitError
}

// hint is the line printed under an error (see internal/hint).
func hint(err error, e *env) string { return hints.For(err, e.layout.DaemonLog()) }

func newRoot(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:   "banger",
		Short: "Disposable microVM sandboxes for a git repository",
		Long: `banger boots fresh Linux microVMs on this host, ships a git repository's
tracked files into them, runs commands there, passes the exit code back and
brings edits back as a git diff.

  banger vm run --rm . -- make test     # one command in a fresh VM
  banger vm create dev && banger vm exec dev -- uname -a

State lives in XDG directories (or under $BANGER_HOME); the daemon, bangerd,
is started on first use.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	group(root)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newVersionCmd(e), newDaemonCmd(e), newDoctorCmd(e), newConfigCmd(e), newMCPCmd(e))
	addVMCommands(root, e)
	return root
}

// group makes cmd a command that only holds subcommands: with no
// subcommand it prints help; with an unknown one it is a usage error.
func group(cmd *cobra.Command) *cobra.Command {
	cmd.Args = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageError{fmt.Errorf("unknown command %q for %q", args[0], c.CommandPath())}
		}
		return nil
	}
	cmd.RunE = func(c *cobra.Command, args []string) error { return c.Help() }
	return cmd
}

// args wraps a cobra positional-args validator so that its failures are
// usage errors.
func args(v cobra.PositionalArgs) cobra.PositionalArgs {
	return func(c *cobra.Command, a []string) error {
		if err := v(c, a); err != nil {
			return usageError{err}
		}
		return nil
	}
}

func (e *env) config() (config.Config, error) {
	return e.cfg, e.cfgErr
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
