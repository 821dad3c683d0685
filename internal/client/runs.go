package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/errdefs"
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
	ID     string
	conn   io.ReadWriteCloser
	wmu    sync.Mutex
	done   chan struct{}
	result api.Run
	err    error
	closed sync.Once
}

// StartRun starts a run and streams it.
func (c *Client) StartRun(ctx context.Context, req api.RunRequest, stdio RunIO) (*RunStream, error) {
	req.Exec.Stdin = stdio.Stdin != nil
	body, _ := json.Marshal(req)
	hreq, err := http.NewRequestWithContext(ctx, "POST", "http://bangerd/v1/runs", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Connection", "Upgrade")
	hreq.Header.Set("Upgrade", api.RunUpgrade)
	resp, err := c.send(hreq)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body.Close()
		return nil, errdefs.New(errdefs.ErrInternal, "run: bangerd did not switch protocols: "+resp.Status)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, errors.New("run: upgraded body is not writable")
	}
	s := &RunStream{ID: resp.Header.Get("X-Banger-Run"), conn: rwc, done: make(chan struct{})}
	go s.readLoop(stdio)
	if stdio.Stdin != nil {
		go s.stdinLoop(stdio.Stdin)
	}
	return s, nil
}

func (s *RunStream) send(typ byte, p []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return api.WriteFrame(s.conn, typ, p)
}

func (s *RunStream) stdinLoop(r io.Reader) {
	buf := make([]byte, 256<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if s.send(api.FrameStdin, buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			s.send(api.FrameStdinEOF, nil)
			return
		}
	}
}

func (s *RunStream) readLoop(stdio RunIO) {
	defer close(s.done)
	rd := bufio.NewReaderSize(s.conn, 256<<10)
	buf := make([]byte, 0, 256<<10)
	for {
		typ, p, err := api.ReadFrame(rd, buf)
		if err != nil {
			s.err = errdefs.DaemonUnreachable(fmt.Sprintf("run %s: connection to bangerd lost before the run ended (it goes on: banger run show %s): %v", s.ID, s.ID, err))
			return
		}
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
			return
		}
	}
}

// Signal delivers a signal to the command (before it runs: cancels the run).
func (s *RunStream) Signal(sig int) error { return s.send(api.FrameSignal, []byte{byte(sig)}) }

// Resize changes the command's terminal size.
func (s *RunStream) Resize(rows, cols uint16) error {
	var b [4]byte
	binary.BigEndian.PutUint16(b[:], rows)
	binary.BigEndian.PutUint16(b[2:], cols)
	return s.send(api.FrameResize, b[:])
}

// Done is closed when the result has arrived (or the connection is lost).
func (s *RunStream) Done() <-chan struct{} { return s.done }

// Wait returns the run's record once it has ended.
func (s *RunStream) Wait() (api.Run, error) {
	<-s.done
	s.closed.Do(func() { s.conn.Close() })
	return s.result, s.err
}

// Close stops watching (the run goes on; by default its command is hung up).
func (s *RunStream) Close() error {
	s.closed.Do(func() { s.conn.Close() })
	return nil
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
