package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/banger-sh/banger/client"
	bmcp "github.com/banger-sh/banger/internal/mcp"
	"github.com/banger-sh/banger/internal/paths"
)

// mcpSession connects the MCP SDK's own client, in process, to banger's
// MCP server talking to this harness's real daemon.
func mcpSession(t *testing.T, h *harness) *mcp.ClientSession {
	t.Helper()
	h.must(t, "daemon", "start")
	l, err := paths.Resolve(func(k string) string {
		if k == "BANGER_HOME" {
			return h.home
		}
		return ""
	}, os.Geteuid())
	if err != nil {
		t.Fatal(err)
	}
	srv := bmcp.New(bmcp.Options{Client: client.New(l.Socket()), Layout: l})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ct, st := mcp.NewInMemoryTransports()
	if _, err := srv.MCP().Connect(ctx, st, nil); err != nil {
		t.Fatal(err)
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "e2e-agent", Version: "v0"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// call calls a tool and decodes its structured result into out; it
// returns the error text of a tool error ("" on success).
func call(t *testing.T, cs *mcp.ClientSession, tool string, args map[string]any, out any) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
	if err != nil {
		t.Fatalf("%s: %v", tool, err)
	}
	if res.IsError {
		var b strings.Builder
		for _, c := range res.Content {
			if tc, ok := c.(*mcp.TextContent); ok {
				b.WriteString(tc.Text)
			}
		}
		return b.String()
	}
	if out != nil {
		b, _ := json.Marshal(res.StructuredContent)
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s: result %s: %v", tool, b, err)
		}
	}
	return ""
}

// TestMCPAgentSession is a scripted agent on banger's MCP server, with the
// SDK's own client, against real VMs: create a VM with a repository, write
// a file, run the tests, export a branch, delete; then one run; errors
// carry banger's code and hint; output is bounded.
func TestMCPAgentSession(t *testing.T) {
	h := env(t)
	cs := mcpSession(t, h)
	tools, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range tools.Tools {
		names = append(names, tl.Name)
		if tl.InputSchema == nil {
			t.Errorf("tool %s has no input schema", tl.Name)
		}
	}
	for _, want := range []string{"run", "create", "exec", "read_file", "write_file", "list_files", "export", "delete", "list"} {
		if !strings.Contains(" "+strings.Join(names, " ")+" ", " "+want+" ") {
			t.Errorf("no tool %s in %v", want, names)
		}
	}

	repo := t.TempDir()
	git(t, repo, "init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(repo, "test.sh"), []byte("test -f added.txt && grep -q agent added.txt && echo tests passed\n"), 0o644)
	git(t, repo, "add", "-A")
	git(t, repo, "commit", "-q", "-m", "init")

	var vm bmcp.VMInfo
	if e := call(t, cs, "create", map[string]any{"name": "mcpdev", "repo": repo}, &vm); e != "" {
		t.Fatalf("create: %s", e)
	}
	if vm.State != "running" || vm.Workspace != "/root/repo" {
		t.Fatalf("create: %+v", vm)
	}
	if e := call(t, cs, "write_file", map[string]any{"vm": "mcpdev", "path": "/root/repo/added.txt", "content": "from the agent\n"}, nil); e != "" {
		t.Fatalf("write_file: %s", e)
	}
	var rf bmcp.ReadFileOutput
	if e := call(t, cs, "read_file", map[string]any{"vm": "mcpdev", "path": "/root/repo/added.txt"}, &rf); e != "" || rf.Content != "from the agent\n" || rf.Mode != "0644" {
		t.Fatalf("read_file: %s %+v", e, rf)
	}
	var ls struct {
		Entries []struct{ Name, Type string } `json:"entries"`
	}
	if e := call(t, cs, "list_files", map[string]any{"vm": "mcpdev", "path": "/root/repo"}, &ls); e != "" || !strings.Contains(toJSON(ls), `"added.txt"`) {
		t.Fatalf("list_files: %s %+v", e, ls)
	}
	var ex bmcp.ExecOutput
	if e := call(t, cs, "exec", map[string]any{"vm": "mcpdev", "command": []string{"sh", "test.sh"}, "cwd": "/root/repo"}, &ex); e != "" || ex.ExitCode != 0 || !strings.Contains(ex.Stdout, "tests passed") {
		t.Fatalf("exec: %s %+v", e, ex)
	}
	var exp bmcp.ExportOutput
	if e := call(t, cs, "export", map[string]any{"vm": "mcpdev", "mode": "branch", "branch": "agent-work"}, &exp); e != "" || exp.FilesChanged != 1 || !strings.HasPrefix(exp.Outcome, "branch agent-work at ") {
		t.Fatalf("export: %s %+v", e, exp)
	}
	if got := git(t, repo, "show", "agent-work:added.txt"); got != "from the agent\n" {
		t.Fatalf("branch agent-work: added.txt %q", got)
	}
	if e := call(t, cs, "delete", map[string]any{"vm": "mcpdev"}, nil); e != "" {
		t.Fatalf("delete: %s", e)
	}

	var run bmcp.RunOutput
	if e := call(t, cs, "run", map[string]any{"repo": repo, "command": []string{"sh", "-c", "echo y > r.txt; echo ran; exit 3"}, "export": "patch"}, &run); e != "" {
		t.Fatalf("run: %s", e)
	}
	if run.ExitCode != 3 || run.FilesChanged != 1 || !strings.Contains(run.Patch, "+++ b/r.txt") || !strings.Contains(run.Stdout, "ran") || run.RunID == "" {
		t.Fatalf("run: %+v", run)
	}

	// Errors: banger's code and hint, as JSON.
	e := call(t, cs, "exec", map[string]any{"vm": "no-such-vm", "command": []string{"true"}}, nil)
	var te bmcp.ToolError
	if err := json.Unmarshal([]byte(e), &te); err != nil || te.Code != "not_found" || te.Hint == "" {
		t.Fatalf("exec on a missing VM: %q", e)
	}
	if e := call(t, cs, "run", map[string]any{"command": []string{"true"}, "export": "bogus", "repo": repo}, nil); !strings.Contains(e, "invalid_argument") {
		t.Fatalf("run with a bad export: %q", e)
	}
	// Schema validation of the input, by the SDK.
	if e := call(t, cs, "exec", map[string]any{"vm": 42, "command": "true"}, nil); e == "" {
		t.Fatal("exec with ill-typed arguments succeeded")
	}

	// Output is bounded: 200 KiB of output comes back as 64 KiB and a marker.
	var big bmcp.RunOutput
	if e := call(t, cs, "run", map[string]any{"command": []string{"sh", "-c", "head -c 204800 /dev/zero | tr '\\0' x; echo; echo end"}}, &big); e != "" {
		t.Fatalf("run: %s", e)
	}
	if !big.StdoutTruncated || len(big.Stdout) > 70<<10 || !strings.Contains(big.Stdout, "bytes of output omitted") || !strings.HasSuffix(big.Stdout, "end\n") {
		t.Fatalf("bounded output: truncated=%v len=%d tail %q", big.StdoutTruncated, len(big.Stdout), big.Stdout[max(0, len(big.Stdout)-40):])
	}
	h.assertNoLeftovers(t)
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
