package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-sh/banger/client"
	"github.com/banger-sh/banger/internal/daemon"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

const daemonStartTimeout = 20 * time.Second

// client returns a client of a running daemon, starting bangerd first when
// none runs (and saying so on stderr).
func (e *env) client(ctx context.Context) (*client.Client, error) {
	c := client.New(e.layout.Socket())
	if _, err := c.Health(ctx); err == nil {
		return c, nil
	} else if !errors.Is(err, errdefs.ErrDaemonUnreachable) {
		return nil, err
	}
	if err := e.startDaemon(ctx, true); err != nil {
		return nil, err
	}
	return c, nil
}

// bangerdPath finds the daemon binary: $BANGER_BANGERD, next to this
// executable, then PATH.
func bangerdPath() (string, error) {
	if p := os.Getenv("BANGER_BANGERD"); p != "" {
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "bangerd")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return system.LookPath("bangerd")
}

// startDaemon starts bangerd detached and waits until it answers.
func (e *env) startDaemon(ctx context.Context, auto bool) error {
	if _, err := e.config(); err != nil {
		return err
	}
	c := client.New(e.layout.Socket())
	if pid := daemon.LockHolder(e.layout.DaemonLock()); pid != 0 {
		// Starting up, or wedged: wait for it rather than racing it. A
		// holder that dies meanwhile (a daemon just killed, whose lock
		// the kernel had not yet released) is replaced below.
		err := waitHealthy(ctx, c, pid, e)
		if err == nil || daemon.LockHolder(e.layout.DaemonLock()) != 0 || syscall.Kill(pid, 0) == nil {
			return err
		}
	}
	bin, err := bangerdPath()
	if err != nil {
		return errdefs.DaemonUnreachable(fmt.Sprintf("cannot reach bangerd at %s and cannot start it: %v (put bangerd next to banger or in PATH)", e.layout.Socket(), err))
	}
	if err := e.layout.Ensure(); err != nil {
		return err
	}
	out, err := os.OpenFile(e.layout.DaemonOutput(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	pid, err := system.StartDetached(system.Detached{Argv: []string{bin}, Stdout: out, Stderr: out})
	if err != nil {
		return errdefs.DaemonUnreachable(fmt.Sprintf("cannot reach bangerd at %s and cannot start it: %v", e.layout.Socket(), err))
	}
	if auto {
		fmt.Fprintf(e.stderr, "banger: started bangerd (pid %d, log %s)\n", pid, e.layout.DaemonLog())
	}
	return waitHealthy(ctx, c, pid, e)
}

func waitHealthy(ctx context.Context, c *client.Client, pid int, e *env) error {
	deadline := time.Now().Add(daemonStartTimeout)
	for time.Now().Before(deadline) {
		if _, err := c.Health(ctx); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if syscall.Kill(pid, 0) != nil && daemon.LockHolder(e.layout.DaemonLock()) == 0 {
			return errdefs.DaemonUnreachable(fmt.Sprintf("bangerd (pid %d) exited during start-up: %s", pid, tail(e.layout.DaemonOutput(), 2048)))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errdefs.DaemonUnreachable(fmt.Sprintf("bangerd (pid %d) did not answer on %s within %s", pid, e.layout.Socket(), daemonStartTimeout))
}

// tail returns the last max bytes of a file, trimmed, for error messages.
func tail(path string, max int64) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no output)"
	}
	defer f.Close()
	st, _ := f.Stat()
	if st != nil && st.Size() > max {
		f.Seek(-max, io.SeekEnd)
	}
	b, _ := io.ReadAll(io.LimitReader(f, max))
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "(no output)"
	}
	return s
}

func newDaemonCmd(e *env) *cobra.Command {
	cmd := group(&cobra.Command{Use: "daemon", Short: "Manage bangerd, the daemon that owns VMs and state"})

	start := &cobra.Command{
		Use: "start", Short: "Start bangerd in the background", Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if pid := daemon.LockHolder(e.layout.DaemonLock()); pid != 0 {
				fmt.Fprintf(e.stdout, "bangerd is already running (pid %d)\n", pid)
				return nil
			}
			if err := e.startDaemon(c.Context(), false); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "bangerd started (pid %d), socket %s\n", daemon.LockHolder(e.layout.DaemonLock()), e.layout.Socket())
			return nil
		},
	}

	var stopTimeout time.Duration
	stop := &cobra.Command{
		Use: "stop", Short: "Stop bangerd (VMs keep running)", Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			pid := daemon.LockHolder(e.layout.DaemonLock())
			if pid == 0 {
				fmt.Fprintln(e.stdout, "bangerd is not running")
				return nil
			}
			cl := client.New(e.layout.Socket())
			if err := cl.StopDaemon(c.Context()); err != nil {
				// Not answering: fall back to SIGTERM.
				syscall.Kill(pid, syscall.SIGTERM)
			}
			deadline := time.Now().Add(stopTimeout)
			for daemon.LockHolder(e.layout.DaemonLock()) != 0 {
				if time.Now().After(deadline) {
					return errdefs.Unavailable(fmt.Sprintf("bangerd (pid %d) did not stop within %s; kill it with 'kill %d'", pid, stopTimeout, pid))
				}
				time.Sleep(50 * time.Millisecond)
			}
			fmt.Fprintf(e.stdout, "bangerd stopped (pid %d)\n", pid)
			return nil
		},
	}
	durationRangeVar(stop.Flags(), &stopTimeout, "timeout", 30*time.Second, time.Millisecond, 0, "how long to wait for it to exit")

	var jsonOut bool
	status := &cobra.Command{
		Use: "status", Short: "Show whether bangerd runs, its pid, version and socket", Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			s := daemonStatus{Socket: e.layout.Socket(), Log: e.layout.DaemonLog(), PID: daemon.LockHolder(e.layout.DaemonLock())}
			cl := client.New(e.layout.Socket())
			if h, err := cl.Health(c.Context()); err == nil {
				s.Running, s.Health = true, &h
				if v, err := cl.Version(c.Context()); err == nil {
					s.Version = &v
					s.PID = v.PID
				}
			}
			if jsonOut {
				printJSON(e.stdout, s)
			} else if s.Running {
				fmt.Fprintf(e.stdout, "bangerd is running\n  pid:     %d\n  version: %s (api %s)\n  uptime:  %s\n  backend: %s\n  socket:  %s\n  log:     %s\n",
					s.PID, s.Version.Version, s.Version.APIVersion, s.Health.Uptime, s.Health.Backend, s.Socket, s.Log)
			} else if s.PID != 0 {
				fmt.Fprintf(e.stdout, "bangerd (pid %d) holds the lock but does not answer on %s\n", s.PID, s.Socket)
			} else {
				fmt.Fprintf(e.stdout, "bangerd is not running (socket %s)\n", s.Socket)
			}
			if !s.Running {
				return exitError{ExitUnavailable}
			}
			return nil
		},
	}
	status.Flags().BoolVar(&jsonOut, "json", false, "print JSON")

	var follow bool
	var lines int
	logs := &cobra.Command{
		Use: "logs", Short: "Print bangerd's log", Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			return printLog(c.Context(), e.stdout, e.layout.DaemonLog(), lines, follow)
		},
	}
	logs.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines")
	intRangeVarP(logs.Flags(), &lines, "lines", "n", 50, 0, 1<<30, "how many of the last lines to print (0: all)")

	cmd.AddCommand(start, stop, status, logs)
	return cmd
}

// printLog prints the last n lines of path and, with follow, new lines as
// they are written (surviving rotation), until ctx ends.
func printLog(ctx context.Context, w io.Writer, path string, n int, follow bool) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !follow {
			return errdefs.NotFound(fmt.Sprintf("no log at %s yet", path))
		}
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	var off int64
	if f != nil {
		var ring []string
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			ring = append(ring, sc.Text())
			if n > 0 && len(ring) > n {
				ring = ring[1:]
			}
		}
		for _, l := range ring {
			fmt.Fprintln(w, l)
		}
		off, _ = f.Seek(0, io.SeekCurrent)
		f.Close()
	}
	if !follow {
		return nil
	}
	buf := make([]byte, 64<<10)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
		st, err := os.Stat(path)
		if err != nil {
			continue
		}
		if st.Size() < off {
			off = 0 // rotated or truncated
		}
		if st.Size() == off {
			continue
		}
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		f.Seek(off, io.SeekStart)
		for {
			k, err := f.Read(buf)
			w.Write(buf[:k])
			off += int64(k)
			if err != nil || k == 0 {
				break
			}
		}
		f.Close()
	}
}
