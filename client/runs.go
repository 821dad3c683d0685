package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/errdefs"
)

// Upload hands the daemon an open file (a work disk) as a file descriptor
// over the socket; the daemon copies its data and returns a token for the
// next create or run request of this user. The daemon never opens a path
// the client names.
func (c *Client) Upload(ctx context.Context, f *os.File) (api.Upload, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return api.Upload{}, &UnreachableError{Socket: c.socket, Err: err}
	}
	defer nc.Close()
	conn := nc.(*net.UnixConn)
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(10 * time.Minute))
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	fmt.Fprintf(conn, "POST /v1/uploads HTTP/1.1\r\nHost: bangerd\r\nConnection: Upgrade\r\nUpgrade: %s\r\nContent-Length: 0\r\n\r\n", api.UploadUpgrade)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return api.Upload{}, errdefs.DaemonUnreachable(fmt.Sprintf("upload: %v", err))
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		return api.Upload{}, decodeError(resp)
	}
	if _, _, err := conn.WriteMsgUnix([]byte{0}, unix.UnixRights(int(f.Fd())), nil); err != nil {
		return api.Upload{}, fmt.Errorf("upload: send the file: %w", err)
	}
	line, err := br.ReadBytes('\n')
	if err != nil {
		return api.Upload{}, errdefs.DaemonUnreachable(fmt.Sprintf("upload: no answer: %v", err))
	}
	var u api.Upload
	if err := json.Unmarshal(line, &u); err != nil {
		return api.Upload{}, fmt.Errorf("upload: bad answer: %w", err)
	}
	if u.Error != nil {
		return u, api.FromWire(u.Error)
	}
	return u, nil
}

// RunIO is where a run's streams go. Stdin nil: the command gets an
// empty stdin. Progress receives the create's progress and notices.
type RunIO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Progress       Progress
	// Exit, if set, is told how the command ended as soon as it has (the
	// export and delete follow before the result).
	Exit func(api.ExecExit)
	// Step, if set, is told each step of the run that is done (created,
	// exported, deleted).
	Step func(api.RunEvent)
}

// RunStream is a run being watched. The run is the daemon's: closing the
// stream (or this process dying) does not stop it.
type RunStream struct {
	*frames
	ID     string
	result api.Run
	err    error
}

// StartRun starts a run and streams it. Signal and Resize act on the
// command (a signal before it runs cancels the run); Wait returns the
// run's record once it has ended.
func (c *Client) StartRun(ctx context.Context, req api.RunRequest, stdio RunIO) (*RunStream, error) {
	req.Exec.Stdin = stdio.Stdin != nil
	f, resp, err := c.upgrade(ctx, "/v1/runs", api.RunUpgrade, req)
	if err != nil {
		return nil, err
	}
	s := &RunStream{frames: f, ID: resp.Header.Get("X-Banger-Run")}
	go f.readLoop(func(typ byte, p []byte) bool {
		switch typ {
		case api.FrameStdout:
			if stdio.Stdout != nil {
				stdio.Stdout.Write(p)
			}
		case api.FrameStderr:
			if stdio.Stderr != nil {
				stdio.Stderr.Write(p)
			}
		case api.FrameEvent:
			var ev api.Event
			if json.Unmarshal(p, &ev) != nil {
				break
			}
			if ev.Progress != nil && stdio.Progress != nil {
				stdio.Progress(*ev.Progress)
			}
			if ev.Run != nil && stdio.Step != nil {
				stdio.Step(*ev.Run)
			}
		case api.FrameExit:
			var x api.ExecExit
			if json.Unmarshal(p, &x) == nil && stdio.Exit != nil {
				stdio.Exit(x)
			}
		case api.FrameResult:
			if err := json.Unmarshal(p, &s.result); err != nil {
				s.err = fmt.Errorf("run: bad result frame: %w", err)
			}
			return true
		}
		return false
	}, func(err error) {
		s.err = errdefs.DaemonUnreachable(fmt.Sprintf("run %s: connection to bangerd lost before the run ended (it goes on: banger run show %s): %v", s.ID, s.ID, err))
	})
	if stdio.Stdin != nil {
		go f.stdinLoop(stdio.Stdin)
	}
	return s, nil
}

// Wait returns the run's record once it has ended.
func (s *RunStream) Wait() (api.Run, error) {
	<-s.done
	s.Close()
	return s.result, s.err
}

// ListRuns lists runs, newest first (limit 0: all).
func (c *Client) ListRuns(ctx context.Context, limit int) ([]api.Run, error) {
	var v []api.Run
	err := c.Do(ctx, "GET", "/v1/runs?limit="+fmt.Sprint(limit), nil, &v)
	return v, err
}

// GetRun returns a run's record (by id or unique prefix).
func (c *Client) GetRun(ctx context.Context, id string) (api.Run, error) {
	var v api.Run
	err := c.Do(ctx, "GET", "/v1/runs/"+url.PathEscape(id), nil, &v)
	return v, err
}

// RunPatch returns a reader of the patch a run kept (untrusted guest
// output: give it to workspace.ParsePatch).
func (c *Client) RunPatch(ctx context.Context, id string) (io.ReadCloser, error) {
	req, err := c.newRequest(ctx, "GET", "/v1/runs/"+url.PathEscape(id)+"/patch", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// SetRunOutcome records what was done with a run's patch.
func (c *Client) SetRunOutcome(ctx context.Context, id, outcome string) error {
	return c.Do(ctx, "POST", "/v1/runs/"+url.PathEscape(id)+"/outcome", api.RunOutcomeRequest{Outcome: outcome}, nil)
}

// RemoveRun forgets an ended run and its patch.
func (c *Client) RemoveRun(ctx context.Context, id string) error {
	return c.Do(ctx, "DELETE", "/v1/runs/"+url.PathEscape(id), nil, nil)
}
