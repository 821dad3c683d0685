// Package client is banger's Go SDK: the typed client of bangerd's API,
// for programs outside this module as for banger's own CLI, MCP server and
// tests.
//
//	import "github.com/banger-sh/banger/client"
//
//	c, err := client.FromEnv() // the daemon of this user's BANGER_HOME/XDG dirs
//	r, err := c.Run(ctx, client.RunOptions{Repo: ".", Command: []string{"make", "test"}, Stdout: os.Stdout})
//
// Every call takes a context; streams take io.Reader and io.Writer
// (StartExec, StartRun, Run). Errors come back in the API's classes: test
// them with errors.Is(err, api.ErrNotFound) and the like. The types of
// requests and answers are in package api.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/paths"
)

// maxResponse bounds a non-streamed response body.
const maxResponse = 16 << 20

// Client talks to one daemon socket.
type Client struct {
	socket string
	hc     *http.Client
	tmp    string // where work disks are built before they are uploaded
}

// FromEnv returns a client of the daemon this user's banger talks to
// ($BANGER_HOME, else the XDG runtime directory; root: /run/banger). It
// does not start the daemon (banger does, on first use).
func FromEnv() (*Client, error) {
	l, err := paths.FromEnv()
	if err != nil {
		return nil, err
	}
	c := New(l.Socket())
	c.tmp = l.TmpDir()
	return c, nil
}

// New returns a client of the daemon listening on socket. Before every
// connection it checks that the socket's directory is this user's own
// (paths.CheckPrivateDir): a socket in a directory someone else controls
// may be anyone's fake daemon, and is refused with a *paths.UnsafeDirError.
func New(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			if err := paths.CheckPrivateDir(filepath.Dir(socket), os.Geteuid()); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, err
			}
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:    4,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}, tmp: os.TempDir()}
}

// Socket is the socket path this client dials.
func (c *Client) Socket() string { return c.socket }

// UnreachableError says the daemon could not be reached.
type UnreachableError struct {
	Socket string
	Err    error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach bangerd at %s: %v", e.Socket, e.Err)
}
func (e *UnreachableError) Unwrap() error { return e.Err }
func (e *UnreachableError) Is(target error) bool {
	return target == errdefs.ErrDaemonUnreachable || target == errdefs.ErrUnavailable
}

func (c *Client) newRequest(ctx context.Context, method, path string, in any) (*http.Request, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://bangerd"+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}

func (c *Client) send(req *http.Request) (*http.Response, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctxErr := req.Context().Err(); ctxErr != nil {
			return nil, ctxErr
		}
		var unsafe *paths.UnsafeDirError
		if errors.As(err, &unsafe) {
			return nil, unsafe // not unavailable: starting a daemon would not help
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, &UnreachableError{Socket: c.socket, Err: err}
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

func decodeError(resp *http.Response) error {
	var e api.Error
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err := json.Unmarshal(b, &e); err != nil || e.Code == "" {
		return errdefs.New(errdefs.ErrInternal, fmt.Sprintf("bangerd answered %s: %s", resp.Status, strings.TrimSpace(string(b))))
	}
	return api.FromWire(&e)
}

// Do sends one request with an optional JSON body and decodes the JSON
// answer into out (when not nil).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	req, err := c.newRequest(ctx, method, path, in)
	if err != nil {
		return err
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponse))
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponse)).Decode(out); err != nil {
		return fmt.Errorf("decode %s %s answer: %w", method, path, err)
	}
	return nil
}

// Stream sends a request whose answer is a stream of api.Events, calls
// progress for each progress event, and decodes the result into out.
func (c *Client) Stream(ctx context.Context, method, path string, in any, progress func(api.Progress), out any) error {
	req, err := c.newRequest(ctx, method, path, in)
	if err != nil {
		return err
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxResponse)
	for sc.Scan() {
		var ev struct {
			Progress *api.Progress   `json:"progress"`
			Result   json.RawMessage `json:"result"`
			Error    *api.Error      `json:"error"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("decode %s %s stream: %w", method, path, err)
		}
		switch {
		case ev.Error != nil:
			return api.FromWire(ev.Error)
		case ev.Progress != nil:
			if progress != nil {
				progress(*ev.Progress)
			}
		case ev.Result != nil:
			if out != nil {
				return json.Unmarshal(ev.Result, out)
			}
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		return errdefs.DaemonUnreachable(fmt.Sprintf("bangerd closed the stream of %s %s: %v", method, path, err))
	}
	return errdefs.DaemonUnreachable(fmt.Sprintf("bangerd closed the stream of %s %s before the result", method, path))
}

// Version asks the daemon for its version.
func (c *Client) Version(ctx context.Context) (api.VersionInfo, error) {
	var v api.VersionInfo
	err := c.Do(ctx, "GET", "/v1/version", nil, &v)
	return v, err
}

// Health asks the daemon whether it is serving.
func (c *Client) Health(ctx context.Context) (api.Health, error) {
	var h api.Health
	err := c.Do(ctx, "GET", "/v1/health", nil, &h)
	return h, err
}

// StopDaemon asks the daemon to shut down cleanly.
func (c *Client) StopDaemon(ctx context.Context) error {
	return c.Do(ctx, "POST", "/v1/daemon/stop", nil, nil)
}
