// Package mcp is banger's Model Context Protocol server (banger mcp): the
// tools an AI coding agent uses instead of scraping the CLI, one per
// daemon operation — run, create, exec, read_file, write_file, list_files,
// export, delete, list. It runs as the user who starts it (as the CLI
// does): it ships repositories the user can read and writes patches and
// branches into them; the daemon does the rest.
//
// Inputs are validated against the tools' JSON schemas (derived from the
// types below). Outputs are bounded: a command's stdout and stderr are cut
// to their first 8 KiB and last 56 KiB with a marker. Every error is a
// tool error whose text is JSON: {"code", "message", "hint"}, banger's
// error code and the hint the CLI would print.
package mcp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/client"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/hint"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/version"
	"github.com/banger-sh/banger/internal/workspace"
)

// Options configure a server.
type Options struct {
	Client *client.Client
	Layout paths.Layout
	// Dir resolves relative repository paths (default: the process's).
	Dir string
}

// Server is banger's MCP server.
type Server struct {
	o   Options
	srv *mcp.Server
}

// New returns a server with every tool.
func New(o Options) *Server {
	s := &Server{o: o, srv: mcp.NewServer(&mcp.Implementation{Name: "banger", Version: version.Version}, &mcp.ServerOptions{
		Instructions: "banger runs commands in disposable Linux microVMs with a copy of a git repository. " +
			"Use run for one command in a fresh VM (the repository's tracked files are shipped in, the edits come back as a patch); " +
			"create, exec, read_file, write_file, list_files, export and delete for a VM kept across several steps.",
	})}
	add(s, "run", "Run one command in a fresh VM with a copy of a repository (its tracked files, uncommitted edits included), "+
		"return its exit code and output, bring its edits back (a patch kept by bangerd and saved in the repo's .git/banger, the patch itself, or a new branch) and delete the VM.", s.run)
	add(s, "create", "Create a VM (optionally with a repository shipped to /root/repo) and return when it is ready.", s.create)
	add(s, "exec", "Run a command in a running VM and return its exit code and output.", s.exec)
	add(s, "read_file", "Read a file of a running VM (at most 16 MiB; longer files come truncated).", s.readFile)
	add(s, "write_file", "Write a file in a running VM (parent directories are created).", s.writeFile)
	add(s, "list_files", "List a directory of a running VM.", s.listFiles)
	add(s, "export", "Bring a VM's workspace edits back: as a patch (returned) or as a commit on a new branch of the repository.", s.export)
	add(s, "delete", "Delete a VM and everything it owns (refused while its workspace has unexported edits, unless force).", s.delete)
	add(s, "list", "List the VMs with their state.", s.list)
	return s
}

// MCP is the underlying SDK server (to serve it on any transport).
func (s *Server) MCP() *mcp.Server { return s.srv }

// add registers a tool whose errors become banger errors (code, message,
// hint).
func add[In, Out any](s *Server, name, desc string, h func(context.Context, In) (Out, error)) {
	mcp.AddTool(s.srv, &mcp.Tool{Name: name, Description: desc}, func(ctx context.Context, _ *mcp.CallToolRequest, in In) (*mcp.CallToolResult, Out, error) {
		out, err := h(ctx, in)
		if err != nil {
			var zero Out
			return nil, zero, s.toolError(err)
		}
		return nil, out, nil
	})
}

// ToolError is a tool's failure as the client sees it: banger's wire code,
// the message and the hint.
type ToolError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
}

func (e *ToolError) Error() string {
	b, _ := json.Marshal(e)
	return string(b)
}

func (s *Server) toolError(err error) error {
	w := api.ToWire(err)
	return &ToolError{Code: w.Code, Message: w.Message, Hint: hint.For(err, s.o.Layout.DaemonLog())}
}

func (s *Server) repoPath(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	if !filepath.IsAbs(p) {
		dir := s.o.Dir
		if dir == "" {
			var err error
			if dir, err = os.Getwd(); err != nil {
				return "", err
			}
		}
		p = filepath.Join(dir, p)
	}
	return filepath.Clean(p), nil
}

func (s *Server) ship(ctx context.Context, repo string, untracked bool) (*api.WorkspaceSpec, error) {
	return s.o.Client.Ship(ctx, repo, untracked, "")
}

// Output bounds.
const (
	outHead   = 8 << 10
	outTail   = 56 << 10
	maxPatch  = 256 << 10
	maxStdin  = 16 << 20
	killAfter = 10 * time.Second
)

// bounded keeps the first outHead and the last outTail bytes written.
type bounded struct {
	mu    sync.Mutex
	head  []byte
	tail  []byte
	total int64
}

func (b *bounded) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.total += int64(len(p))
	if room := outHead - len(b.head); room > 0 {
		n := min(room, len(p))
		b.head = append(b.head, p[:n]...)
		p = p[n:]
	}
	b.tail = append(b.tail, p...)
	if len(b.tail) > outTail {
		b.tail = append(b.tail[:0:0], b.tail[len(b.tail)-outTail:]...)
	}
	return len(p), nil
}

// text returns the output, with a marker where it was cut, and whether it
// was cut.
func (b *bounded) text() (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	kept := int64(len(b.head) + len(b.tail))
	s := string(b.head)
	cut := b.total > kept
	if cut {
		s += fmt.Sprintf("\n[... banger: %d bytes of output omitted ...]\n", b.total-kept)
	}
	s += string(b.tail)
	return strings.ToValidUTF8(s, "\uFFFD"), cut
}

// RunInput is the run tool's input.
type RunInput struct {
	Command          []string `json:"command" jsonschema:"the command and its arguments, e.g. [\"make\",\"test\"] or [\"sh\",\"-c\",\"go test ./...\"]"`
	Repo             string   `json:"repo,omitempty" jsonschema:"a git repository on the host whose tracked files (with uncommitted edits) are shipped to /root/repo, where the command runs"`
	IncludeUntracked bool     `json:"include_untracked,omitempty" jsonschema:"also ship untracked files that are not ignored"`
	Export           string   `json:"export,omitempty" jsonschema:"what to do with the edits the command made to the repository: rescue (default: kept by bangerd and saved in the repo's .git/banger), patch (returned as text), branch (a commit on a new branch named by branch)"`
	Branch           string   `json:"branch,omitempty" jsonschema:"with export=branch: the new branch's name"`
	TimeoutSeconds   int      `json:"timeout_seconds,omitempty" jsonschema:"end the command (SIGTERM, SIGKILL 10 s later) when it runs longer; 0: no limit"`
	Env              []string `json:"env,omitempty" jsonschema:"environment entries, each KEY=VALUE, added to the command's"`
	Cwd              string   `json:"cwd,omitempty" jsonschema:"working directory in the guest (default /root/repo with a repo, else /root)"`
	Stdin            string   `json:"stdin,omitempty" jsonschema:"text given to the command on stdin"`
	Image            string   `json:"image,omitempty" jsonschema:"guest image (default: the configured one)"`
	VCPUs            int      `json:"vcpus,omitempty" jsonschema:"virtual CPUs (default 1)"`
	MemoryMiB        int      `json:"memory_mib,omitempty" jsonschema:"memory in MiB (default 512)"`
}

// RunOutput is the run tool's result.
type RunOutput struct {
	RunID           string `json:"run_id" jsonschema:"the run's id (banger run show ID)"`
	VM              string `json:"vm"`
	State           string `json:"state" jsonschema:"done, failed, cancelled or interrupted"`
	ExitCode        int    `json:"exit_code" jsonschema:"the command's exit code (128+N for signal N); -1 if it never ran"`
	TimedOut        bool   `json:"timed_out,omitempty"`
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	StdoutTruncated bool   `json:"stdout_truncated,omitempty"`
	StderrTruncated bool   `json:"stderr_truncated,omitempty"`
	FilesChanged    int    `json:"files_changed" jsonschema:"files of the repository the command changed"`
	Diffstat        string `json:"diffstat,omitempty"`
	Patch           string `json:"patch,omitempty" jsonschema:"with export=patch: the edits as a patch git apply takes (at most 256 KiB)"`
	Outcome         string `json:"outcome,omitempty" jsonschema:"what was done with the edits"`
	DurationMS      int64  `json:"duration_ms"`
}

func (s *Server) run(ctx context.Context, in RunInput) (RunOutput, error) {
	if len(in.Command) == 0 {
		return RunOutput{}, errdefs.InvalidArgument("command: give the command to run")
	}
	switch in.Export {
	case "", "rescue", "patch":
	case "branch":
		if in.Branch == "" {
			return RunOutput{}, errdefs.InvalidArgument("export=branch needs branch (the new branch's name)")
		}
	default:
		return RunOutput{}, errdefs.InvalidArgument(fmt.Sprintf("export %q: want rescue, patch or branch", in.Export))
	}
	if in.Repo == "" && (in.Export != "" || in.IncludeUntracked) {
		return RunOutput{}, errdefs.InvalidArgument("export and include_untracked need a repo")
	}
	if len(in.Stdin) > maxStdin {
		return RunOutput{}, errdefs.InvalidArgument(fmt.Sprintf("stdin: at most %d bytes", maxStdin))
	}
	repo, err := s.repoPath(in.Repo)
	if err != nil {
		return RunOutput{}, err
	}
	var stdout, stderr bounded
	o := client.RunOptions{Command: in.Command, Repo: repo, IncludeUntracked: in.IncludeUntracked,
		VM:  api.CreateVMRequest{Image: in.Image, VCPUs: in.VCPUs, MemoryMiB: in.MemoryMiB},
		Env: in.Env, Dir: in.Cwd, Stdout: &stdout, Stderr: &stderr, Timeout: time.Duration(in.TimeoutSeconds) * time.Second}
	if in.Stdin != "" {
		o.Stdin = strings.NewReader(in.Stdin)
	}
	// The run is the daemon's: a cancelled tool call interrupts the
	// command (Ctrl-C), the daemon still keeps its edits and deletes it.
	r, err := s.o.Client.Run(ctx, o)
	if err != nil {
		return RunOutput{}, err
	}
	ws := &api.WorkspaceSpec{Repo: repo}
	if rc := r.Receipt; rc != nil && rc.Base != nil {
		ws.Base = *rc.Base
	}
	out := RunOutput{RunID: r.ID, VM: r.VM, State: r.State, ExitCode: r.ExitCode, TimedOut: r.TimedOut, DurationMS: r.Phases["total"]}
	out.Stdout, out.StdoutTruncated = stdout.text()
	out.Stderr, out.StderrTruncated = stderr.text()
	if r.Patch != nil {
		out.FilesChanged, out.Diffstat = r.Patch.Files, r.Patch.Diffstat
		rc, err := s.o.Client.RunPatch(context.WithoutCancel(ctx), r.ID)
		if err != nil {
			return out, err
		}
		defer rc.Close()
		u, err := s.usePatch(context.WithoutCancel(ctx), rc, r.VM, ws, in.Export, in.Branch)
		if err != nil {
			return out, fmt.Errorf("run %s (exit %d): the edits are kept by bangerd (banger run patch %s): %w", r.ID, r.ExitCode, r.ID, err)
		}
		out.Patch, out.Outcome = u.patch, u.outcome
		s.o.Client.SetRunOutcome(context.WithoutCancel(ctx), r.ID, u.outcome)
	}
	if r.Error != nil && r.ExitCode < 0 {
		return out, api.FromWire(r.Error)
	}
	return out, nil
}

type used struct{ patch, outcome string }

// usePatch does with a workspace patch what export asks: rescue (saved in
// the repo's git dir), patch (returned), branch (a new branch).
func (s *Server) usePatch(ctx context.Context, r io.Reader, label string, ws *api.WorkspaceSpec, export, branch string) (used, error) {
	p, err := workspace.ParsePatch(r, 0)
	if err != nil {
		return used{}, err
	}
	if p.Empty() {
		return used{}, nil
	}
	switch export {
	case "patch":
		if p.Size() > maxPatch {
			return used{outcome: "too large to return"}, errdefs.InvalidArgument(fmt.Sprintf("the patch is %d bytes, more than the %d a tool result carries: use export=rescue or branch", p.Size(), maxPatch))
		}
		var b bytes.Buffer
		if err := workspace.WritePatch(p, &b); err != nil {
			return used{}, err
		}
		return used{patch: b.String(), outcome: "returned as a patch"}, nil
	case "branch":
		commit, err := workspace.Branch(ctx, ws.Repo, p, branch, workspace.Base{Head: ws.Base.Head, Tree: ws.Base.Tree, Commit: ws.Base.Commit})
		if err != nil {
			return used{}, err
		}
		return used{outcome: fmt.Sprintf("branch %s at %s", branch, commit)}, nil
	}
	path, _, err := workspace.SaveRescue(ctx, ws.Repo, label, p)
	if err != nil {
		return used{}, err
	}
	return used{outcome: "rescue saved in " + path}, nil
}

// VMInfo is a VM as the tools show it.
type VMInfo struct {
	Name      string `json:"name"`
	State     string `json:"state"`
	Image     string `json:"image"`
	VCPUs     int    `json:"vcpus"`
	MemoryMiB int    `json:"memory_mib"`
	IP        string `json:"ip,omitempty"`
	Boot      string `json:"boot,omitempty"`
	Workspace string `json:"workspace,omitempty" jsonschema:"where the repository is in the guest"`
	Repo      string `json:"repo,omitempty" jsonschema:"the host repository it was shipped from"`
}

func vmInfo(v api.VM) VMInfo {
	i := VMInfo{Name: v.Name, State: v.State, Image: v.Image, VCPUs: v.VCPUs, MemoryMiB: v.MemoryMiB, IP: v.IP, Boot: v.Boot}
	if v.Workspace != nil {
		i.Workspace, i.Repo = v.Workspace.Path, v.Workspace.Repo
	}
	return i
}

// CreateInput is the create tool's input.
type CreateInput struct {
	Name             string `json:"name,omitempty" jsonschema:"the VM's name (default: vm-<random>)"`
	Repo             string `json:"repo,omitempty" jsonschema:"a git repository on the host to ship to /root/repo"`
	IncludeUntracked bool   `json:"include_untracked,omitempty"`
	Image            string `json:"image,omitempty"`
	VCPUs            int    `json:"vcpus,omitempty"`
	MemoryMiB        int    `json:"memory_mib,omitempty"`
	Net              string `json:"net,omitempty" jsonschema:"nat (default), none, shared or off"`
}

func (s *Server) create(ctx context.Context, in CreateInput) (VMInfo, error) {
	req := api.CreateVMRequest{Name: in.Name, Image: in.Image, VCPUs: in.VCPUs, MemoryMiB: in.MemoryMiB, Net: in.Net}
	repo, err := s.repoPath(in.Repo)
	if err != nil {
		return VMInfo{}, err
	}
	if repo != "" {
		if req.Workspace, err = s.ship(ctx, repo, in.IncludeUntracked); err != nil {
			return VMInfo{}, err
		}
	}
	v, err := s.o.Client.CreateVM(ctx, req, nil)
	if err != nil {
		return VMInfo{}, err
	}
	return vmInfo(v), nil
}

// ExecInput is the exec tool's input.
type ExecInput struct {
	VM             string   `json:"vm" jsonschema:"the VM's name"`
	Command        []string `json:"command"`
	Cwd            string   `json:"cwd,omitempty" jsonschema:"working directory (default /root)"`
	Env            []string `json:"env,omitempty"`
	Stdin          string   `json:"stdin,omitempty"`
	TimeoutSeconds int      `json:"timeout_seconds,omitempty" jsonschema:"end the command (SIGTERM, SIGKILL 10 s later) after this long; 0: no limit"`
}

// ExecOutput is the exec tool's result.
type ExecOutput struct {
	ExitCode        int    `json:"exit_code" jsonschema:"the command's exit code (128+N for signal N)"`
	TimedOut        bool   `json:"timed_out,omitempty"`
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	StdoutTruncated bool   `json:"stdout_truncated,omitempty"`
	StderrTruncated bool   `json:"stderr_truncated,omitempty"`
}

func (s *Server) exec(ctx context.Context, in ExecInput) (ExecOutput, error) {
	if len(in.Command) == 0 {
		return ExecOutput{}, errdefs.InvalidArgument("command: give the command to run")
	}
	if in.TimeoutSeconds < 0 {
		return ExecOutput{}, errdefs.InvalidArgument("timeout_seconds must not be negative")
	}
	var stdout, stderr bounded
	stdio := client.ExecIO{Stdout: &stdout, Stderr: &stderr}
	if in.Stdin != "" {
		stdio.Stdin = strings.NewReader(in.Stdin)
	}
	x, err := s.o.Client.StartExec(context.WithoutCancel(ctx), in.VM, api.ExecRequest{Argv: in.Command, Env: in.Env, Dir: in.Cwd}, stdio)
	if err != nil {
		return ExecOutput{}, err
	}
	var timedOut bool
	var timeout <-chan time.Time
	if in.TimeoutSeconds > 0 {
		t := time.NewTimer(time.Duration(in.TimeoutSeconds) * time.Second)
		defer t.Stop()
		timeout = t.C
	}
	var kill <-chan time.Time
	for done := false; !done; {
		select {
		case <-x.Done():
			done = true
		case <-timeout:
			timedOut, timeout = true, nil
			x.Signal(int(syscall.SIGTERM))
			kill = time.After(killAfter)
		case <-kill:
			x.Signal(int(syscall.SIGKILL))
			kill = nil
		case <-ctx.Done():
			x.Signal(int(syscall.SIGKILL))
			<-x.Done()
			done = true
		}
	}
	st, err := x.Wait()
	if err != nil {
		return ExecOutput{}, err
	}
	out := ExecOutput{ExitCode: st.Code, TimedOut: timedOut}
	out.Stdout, out.StdoutTruncated = stdout.text()
	out.Stderr, out.StderrTruncated = stderr.text()
	return out, nil
}

// ReadFileInput is the read_file tool's input.
type ReadFileInput struct {
	VM       string `json:"vm"`
	Path     string `json:"path" jsonschema:"absolute path in the guest"`
	MaxBytes int64  `json:"max_bytes,omitempty" jsonschema:"read at most this many bytes (default and limit 16 MiB)"`
}

// ReadFileOutput is the read_file tool's result.
type ReadFileOutput struct {
	Path          string `json:"path"`
	Type          string `json:"type" jsonschema:"file or symlink"`
	Mode          string `json:"mode" jsonschema:"octal permission bits"`
	Size          int64  `json:"size"`
	Content       string `json:"content,omitempty" jsonschema:"the content, when it is valid UTF-8"`
	ContentBase64 string `json:"content_base64,omitempty" jsonschema:"the content, base64, when it is not valid UTF-8"`
	Truncated     bool   `json:"truncated,omitempty"`
	Link          string `json:"link,omitempty" jsonschema:"a symlink's target"`
}

func (s *Server) readFile(ctx context.Context, in ReadFileInput) (ReadFileOutput, error) {
	fc, err := s.o.Client.ReadFile(ctx, in.VM, in.Path, in.MaxBytes)
	if err != nil {
		return ReadFileOutput{}, err
	}
	out := ReadFileOutput{Path: fc.Path, Type: fc.Type, Mode: fc.Mode, Size: fc.Size, Truncated: fc.Truncated, Link: fc.Link}
	if utf8.Valid(fc.Data) {
		out.Content = string(fc.Data)
	} else {
		out.ContentBase64 = base64.StdEncoding.EncodeToString(fc.Data)
	}
	return out, nil
}

// WriteFileInput is the write_file tool's input.
type WriteFileInput struct {
	VM            string `json:"vm"`
	Path          string `json:"path" jsonschema:"absolute path in the guest"`
	Content       string `json:"content,omitempty" jsonschema:"the file's content (text)"`
	ContentBase64 string `json:"content_base64,omitempty" jsonschema:"the file's content, base64 (instead of content)"`
	Mode          string `json:"mode,omitempty" jsonschema:"octal permission bits (default 644)"`
}

// WriteFileOutput is the write_file tool's result.
type WriteFileOutput struct {
	Path  string `json:"path"`
	Bytes int    `json:"bytes"`
}

func (s *Server) writeFile(ctx context.Context, in WriteFileInput) (WriteFileOutput, error) {
	data := []byte(in.Content)
	if in.ContentBase64 != "" {
		if in.Content != "" {
			return WriteFileOutput{}, errdefs.InvalidArgument("give content or content_base64, not both")
		}
		var err error
		if data, err = base64.StdEncoding.DecodeString(in.ContentBase64); err != nil {
			return WriteFileOutput{}, errdefs.InvalidArgument("content_base64: " + err.Error())
		}
	}
	var mode uint64 = 0o644
	if in.Mode != "" {
		m, err := strconv.ParseUint(in.Mode, 8, 32)
		if err != nil || m > 0o777 {
			return WriteFileOutput{}, errdefs.InvalidArgument(fmt.Sprintf("mode %q: want octal permission bits, e.g. 755", in.Mode))
		}
		mode = m
	}
	if err := s.o.Client.WriteFile(ctx, in.VM, in.Path, bytes.NewReader(data), int64(len(data)), uint32(mode)); err != nil {
		return WriteFileOutput{}, err
	}
	return WriteFileOutput{Path: in.Path, Bytes: len(data)}, nil
}

// ListFilesInput is the list_files tool's input.
type ListFilesInput struct {
	VM   string `json:"vm"`
	Path string `json:"path" jsonschema:"absolute path of a directory in the guest"`
}

func (s *Server) listFiles(ctx context.Context, in ListFilesInput) (api.DirListing, error) {
	return s.o.Client.ListDir(ctx, in.VM, in.Path)
}

// ExportInput is the export tool's input.
type ExportInput struct {
	VM     string `json:"vm"`
	Mode   string `json:"mode" jsonschema:"patch (the edits returned as a patch) or branch (a commit on a new branch of the repository)"`
	Branch string `json:"branch,omitempty" jsonschema:"with mode=branch: the new branch's name"`
}

// ExportOutput is the export tool's result.
type ExportOutput struct {
	FilesChanged int    `json:"files_changed"`
	Patch        string `json:"patch,omitempty"`
	Outcome      string `json:"outcome,omitempty"`
}

func (s *Server) export(ctx context.Context, in ExportInput) (ExportOutput, error) {
	if in.Mode != "patch" && in.Mode != "branch" {
		return ExportOutput{}, errdefs.InvalidArgument(fmt.Sprintf("mode %q: want patch or branch", in.Mode))
	}
	if in.Mode == "branch" && in.Branch == "" {
		return ExportOutput{}, errdefs.InvalidArgument("mode=branch needs branch (the new branch's name)")
	}
	v, err := s.o.Client.GetVM(ctx, in.VM)
	if err != nil {
		return ExportOutput{}, err
	}
	if v.Workspace == nil {
		return ExportOutput{}, errdefs.NotFound(fmt.Sprintf("vm %s has no workspace", v.Name))
	}
	rc, err := s.o.Client.ExportWorkspace(ctx, v.Name)
	if err != nil {
		return ExportOutput{}, err
	}
	defer rc.Close()
	var spool bytes.Buffer
	if _, err := io.Copy(&spool, io.LimitReader(rc, workspace.DefaultPatchLimit+1)); err != nil {
		return ExportOutput{}, err
	}
	raw := spool.Bytes()
	ws := &api.WorkspaceSpec{Repo: v.Workspace.Repo, Base: v.Workspace.Base}
	u, err := s.usePatch(ctx, bytes.NewReader(raw), v.Name, ws, in.Mode, in.Branch)
	if err != nil {
		return ExportOutput{}, err
	}
	p, _ := workspace.ParsePatch(bytes.NewReader(raw), 0)
	out := ExportOutput{Patch: u.patch, Outcome: u.outcome}
	if p != nil {
		out.FilesChanged = len(p.Changes)
	}
	sum := sha256hex(raw)
	if err := s.o.Client.MarkExported(ctx, v.Name, sum); err != nil {
		return out, err
	}
	return out, nil
}

// DeleteInput is the delete tool's input.
type DeleteInput struct {
	VM    string `json:"vm"`
	Force bool   `json:"force,omitempty" jsonschema:"delete even with unexported workspace edits"`
}

// DeleteOutput is the delete tool's result.
type DeleteOutput struct {
	Deleted string `json:"deleted"`
}

func (s *Server) delete(ctx context.Context, in DeleteInput) (DeleteOutput, error) {
	if err := s.o.Client.DeleteVM(ctx, in.VM, in.Force); err != nil {
		return DeleteOutput{}, err
	}
	return DeleteOutput{Deleted: in.VM}, nil
}

// ListInput is the list tool's (empty) input.
type ListInput struct{}

// ListOutput is the list tool's result.
type ListOutput struct {
	VMs []VMInfo `json:"vms"`
}

func (s *Server) list(ctx context.Context, _ ListInput) (ListOutput, error) {
	vms, err := s.o.Client.ListVMs(ctx)
	if err != nil {
		return ListOutput{}, err
	}
	out := ListOutput{VMs: []VMInfo{}}
	for _, v := range vms {
		out.VMs = append(out.VMs, vmInfo(v))
	}
	return out, nil
}

func sha256hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
