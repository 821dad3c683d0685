package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/errdefs"
)

// Progress receives progress events of long operations.
type Progress func(api.Progress)

// CreateVM creates and boots a VM, returning once its agent is ready.
func (c *Client) CreateVM(ctx context.Context, req api.CreateVMRequest, p Progress) (api.VM, error) {
	var v api.VM
	err := c.Stream(ctx, "POST", "/v1/vms", req, p, &v)
	return v, err
}

// ListVMs lists every VM.
func (c *Client) ListVMs(ctx context.Context) ([]api.VM, error) {
	var v []api.VM
	err := c.Do(ctx, "GET", "/v1/vms", nil, &v)
	return v, err
}

// GetVM describes one VM.
func (c *Client) GetVM(ctx context.Context, name string) (api.VM, error) {
	var v api.VM
	err := c.Do(ctx, "GET", "/v1/vms/"+url.PathEscape(name), nil, &v)
	return v, err
}

// DeleteVM deletes a VM; force kills a running one.
func (c *Client) DeleteVM(ctx context.Context, name string, force bool) error {
	return c.Do(ctx, "DELETE", fmt.Sprintf("/v1/vms/%s?force=%t", url.PathEscape(name), force), nil, nil)
}

// StopVM powers a VM off.
func (c *Client) StopVM(ctx context.Context, name string, req api.StopVMRequest) (api.VM, error) {
	var v api.VM
	err := c.Do(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/stop", req, &v)
	return v, err
}

// StartVM boots a stopped VM.
func (c *Client) StartVM(ctx context.Context, name string, p Progress) (api.VM, error) {
	var v api.VM
	err := c.Stream(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/start", nil, p, &v)
	return v, err
}

// SetVM changes a stopped VM's shape.
func (c *Client) SetVM(ctx context.Context, name string, req api.SetVMRequest) (api.VM, error) {
	var v api.VM
	err := c.Do(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/set", req, &v)
	return v, err
}

// Console streams a VM's console log into w; follow keeps streaming until
// ctx ends.
func (c *Client) Console(ctx context.Context, name string, follow bool, w io.Writer) error {
	req, err := c.newRequest(ctx, "GET", fmt.Sprintf("/v1/vms/%s/console?follow=%t", url.PathEscape(name), follow), nil)
	if err != nil {
		return err
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// BuildImage builds and registers an image.
func (c *Client) BuildImage(ctx context.Context, req api.BuildImageRequest, p Progress) (api.Image, error) {
	var im api.Image
	err := c.Stream(ctx, "POST", "/v1/images", req, p, &im)
	return im, err
}

// ImportImage registers an image made of existing files.
func (c *Client) ImportImage(ctx context.Context, req api.ImportImageRequest, p Progress) (api.Image, error) {
	var im api.Image
	err := c.Stream(ctx, "POST", "/v1/images/import", req, p, &im)
	return im, err
}

// ListImages lists images.
func (c *Client) ListImages(ctx context.Context) ([]api.Image, error) {
	var v []api.Image
	err := c.Do(ctx, "GET", "/v1/images", nil, &v)
	return v, err
}

// GetImage describes one image.
func (c *Client) GetImage(ctx context.Context, name string) (api.Image, error) {
	var v api.Image
	err := c.Do(ctx, "GET", "/v1/images/"+url.PathEscape(name), nil, &v)
	return v, err
}

// RemoveImage deletes an image.
func (c *Client) RemoveImage(ctx context.Context, name string) error {
	return c.Do(ctx, "DELETE", "/v1/images/"+url.PathEscape(name), nil, nil)
}

// Exec is a command running in a VM.
type Exec struct {
	*frames
	exit api.ExecExit
	err  error
}

// ExecIO is where an exec's streams go. Stdin nil: the command gets an
// empty stdin.
type ExecIO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// StartExec starts a command in a VM and streams its I/O until it ends.
// Signal, Resize and Close act on the command; Wait returns how it ended.
func (c *Client) StartExec(ctx context.Context, name string, req api.ExecRequest, stdio ExecIO) (*Exec, error) {
	req.Stdin = stdio.Stdin != nil
	f, _, err := c.upgrade(ctx, "/v1/vms/"+url.PathEscape(name)+"/exec", api.ExecUpgrade, req)
	if err != nil {
		return nil, err
	}
	x := &Exec{frames: f}
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
		case api.FrameExit:
			if err := json.Unmarshal(p, &x.exit); err != nil {
				x.err = fmt.Errorf("exec: bad exit frame: %w", err)
			} else if x.exit.Error != nil {
				x.err = api.FromWire(x.exit.Error)
			}
			return true
		}
		return false
	}, func(err error) {
		x.err = errdefs.DaemonUnreachable(fmt.Sprintf("exec: connection to bangerd lost before the command ended: %v", err))
	})
	if stdio.Stdin != nil {
		go f.stdinLoop(stdio.Stdin)
	}
	return x, nil
}

// Wait waits for the command and returns how it ended.
func (x *Exec) Wait() (api.ExecExit, error) {
	<-x.done
	x.Close()
	return x.exit, x.err
}

// PrepareSSH starts sshd in a VM and says how to reach it.
func (c *Client) PrepareSSH(ctx context.Context, name string) (api.SSHInfo, error) {
	var v api.SSHInfo
	err := c.Do(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/ssh", nil, &v)
	return v, err
}

// AddForward forwards a host port to a VM's port; it returns the
// normalised HOSTADDR:PORT:GUESTPORT.
func (c *Client) AddForward(ctx context.Context, name, spec string) (string, error) {
	var v map[string]string
	err := c.Do(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/ports", api.ForwardRequest{Spec: spec}, &v)
	return v["forward"], err
}

// PrepareWorkspace streams a workspace tar into a running VM at path.
// produce writes the tar and returns the workspace's base (known only at
// the end of the stream; it travels in the request's trailers).
func (c *Client) PrepareWorkspace(ctx context.Context, name, path, repo string, produce func(w io.Writer) (api.Base, error)) (api.VM, error) {
	q := url.Values{"path": {path}, "repo": {repo}}
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, "POST", "http://bangerd/v1/vms/"+url.PathEscape(name)+"/workspace?"+q.Encode(), pr)
	if err != nil {
		return api.VM{}, err
	}
	req.Header.Set("Content-Type", "application/x-tar")
	req.Trailer = http.Header{"X-Banger-Base-Head": nil, "X-Banger-Base-Tree": nil, "X-Banger-Base-Commit": nil}
	done := make(chan error, 1)
	go func() {
		base, err := produce(pw)
		defer func() { done <- err }()
		if err == nil {
			req.Trailer.Set("X-Banger-Base-Head", base.Head)
			req.Trailer.Set("X-Banger-Base-Tree", base.Tree)
			req.Trailer.Set("X-Banger-Base-Commit", base.Commit)
		}
		pw.CloseWithError(err)
	}()
	resp, err := c.send(req)
	pr.CloseWithError(errors.New("request ended"))
	perr := <-done
	if err != nil {
		return api.VM{}, err
	}
	if perr != nil {
		resp.Body.Close()
		return api.VM{}, perr
	}
	defer resp.Body.Close()
	var v api.VM
	err = json.NewDecoder(io.LimitReader(resp.Body, maxResponse)).Decode(&v)
	return v, err
}

// PrepareWorkspaceDisk attaches an uploaded work disk (ws from
// workspace.ShipSet) to a running VM's empty work-disk slot, mounted at
// ws.Path. A VM without a free slot answers a conflict: PrepareWorkspace
// unpacks into its root filesystem instead.
func (c *Client) PrepareWorkspaceDisk(ctx context.Context, name string, ws *api.WorkspaceSpec) (api.VM, error) {
	var v api.VM
	err := c.Do(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/workspace/disk", ws, &v)
	return v, err
}

// ExportWorkspace returns a reader of the VM's workspace patch, as the
// guest produced it (untrusted: give it to workspace.ParsePatch).
func (c *Client) ExportWorkspace(ctx context.Context, name string) (io.ReadCloser, error) {
	req, err := c.newRequest(ctx, "GET", "/v1/vms/"+url.PathEscape(name)+"/workspace/export", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// MarkExported tells the daemon the patch with this digest was saved.
func (c *Client) MarkExported(ctx context.Context, name, sha string) error {
	return c.Do(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/workspace/exported", api.ExportedRequest{SHA256: sha}, nil)
}

// WarmImage builds an image's warm-start template for a shape now.
func (c *Client) WarmImage(ctx context.Context, name string, req api.WarmRequest, p Progress) (api.Template, error) {
	var t api.Template
	err := c.Stream(ctx, "POST", "/v1/images/"+url.PathEscape(name)+"/warm", req, p, &t)
	return t, err
}

// PruneImages removes warm-start templates no VM uses.
func (c *Client) PruneImages(ctx context.Context) (api.PruneResult, error) {
	var r api.PruneResult
	err := c.Do(ctx, "POST", "/v1/images/prune", nil, &r)
	return r, err
}

// ReadFile reads a file of a running VM (at most max bytes; 0: the
// daemon's limit, 16 MiB); Truncated says whether there was more.
func (c *Client) ReadFile(ctx context.Context, name, path string, max int64) (api.FileContent, error) {
	q := url.Values{"path": {path}}
	if max > 0 {
		q.Set("max", fmt.Sprint(max))
	}
	var v api.FileContent
	err := c.Do(ctx, "GET", "/v1/vms/"+url.PathEscape(name)+"/file?"+q.Encode(), nil, &v)
	return v, err
}

// WriteFile writes size bytes of r as a file of a running VM, with the
// permission bits of mode (0: 0644).
func (c *Client) WriteFile(ctx context.Context, name, path string, r io.Reader, size int64, mode uint32) error {
	q := url.Values{"path": {path}}
	if mode != 0 {
		q.Set("mode", fmt.Sprintf("%o", mode))
	}
	req, err := http.NewRequestWithContext(ctx, "PUT", "http://bangerd/v1/vms/"+url.PathEscape(name)+"/file?"+q.Encode(), io.LimitReader(r, size))
	if err != nil {
		return err
	}
	req.ContentLength = size
	if size == 0 {
		req.Body = http.NoBody
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// ListDir lists a directory of a running VM.
func (c *Client) ListDir(ctx context.Context, name, path string) (api.DirListing, error) {
	var v api.DirListing
	err := c.Do(ctx, "GET", "/v1/vms/"+url.PathEscape(name)+"/dir?"+url.Values{"path": {path}}.Encode(), nil, &v)
	return v, err
}
