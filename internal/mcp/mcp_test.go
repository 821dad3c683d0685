package mcp

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/banger-sh/banger/client"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/paths"
)

// TestToolsAndSchemas: every tool is there with an input schema, and an
// error comes back as a tool error with banger's code and hint (here: no
// daemon at the socket).
func TestToolsAndSchemas(t *testing.T) {
	l := paths.Layout{State: t.TempDir(), Runtime: t.TempDir()}
	os.Chmod(l.Runtime, 0o700)
	s := New(Options{Client: client.New(l.Socket()), Layout: l})
	ctx := context.Background()
	ct, st := mcp.NewInMemoryTransports()
	if _, err := s.MCP().Connect(ctx, st, nil); err != nil {
		t.Fatal(err)
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "t"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	res, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Tools) != 9 {
		t.Errorf("%d tools", len(res.Tools))
	}
	for _, tl := range res.Tools {
		if tl.InputSchema == nil || tl.Description == "" {
			t.Errorf("tool %s: schema %v, description %q", tl.Name, tl.InputSchema, tl.Description)
		}
	}
	r, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "list", Arguments: map[string]any{}})
	if err != nil {
		t.Fatal(err)
	}
	text := r.Content[0].(*mcp.TextContent).Text
	if !r.IsError || !strings.Contains(text, `"code":"unavailable"`) || !strings.Contains(text, `"hint":"bangerd's log`) {
		t.Fatalf("error result %v %q", r.IsError, text)
	}
	r, _ = cs.CallTool(ctx, &mcp.CallToolParams{Name: "run", Arguments: map[string]any{"command": []string{}}})
	if text := r.Content[0].(*mcp.TextContent).Text; !r.IsError || !strings.Contains(text, "invalid_argument") {
		t.Fatalf("empty command: %q", text)
	}
	_ = errdefs.ErrInvalidArgument
}

func TestBoundedKeepsHeadAndTail(t *testing.T) {
	var b bounded
	b.Write([]byte(strings.Repeat("h", outHead)))
	for i := 0; i < 100; i++ {
		b.Write([]byte(strings.Repeat("x", 1000)))
	}
	b.Write([]byte("the end"))
	s, cut := b.text()
	if !cut || !strings.HasPrefix(s, strings.Repeat("h", outHead)) || !strings.HasSuffix(s, "the end") || len(s) > outHead+outTail+100 {
		t.Fatalf("cut=%v len=%d", cut, len(s))
	}
	var small bounded
	small.Write([]byte("all"))
	if s, cut := small.text(); cut || s != "all" {
		t.Fatalf("%q %v", s, cut)
	}
}
