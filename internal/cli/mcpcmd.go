package cli

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"

	bmcp "github.com/banger-sh/banger/internal/mcp"
)

func newMCPCmd(e *env) *cobra.Command {
	var httpAddr string
	cmd := &cobra.Command{
		Use:   "mcp [--http ADDR]",
		Short: "Serve banger's tools to an AI agent over the Model Context Protocol (stdio, or streamable HTTP)",
		Long: `Serve banger's tools over the Model Context Protocol: run (one command in a
fresh VM with a copy of a repository, edits back as a patch or a branch),
create, exec, read_file, write_file, list_files, export, delete, list.

By default it speaks MCP on stdin/stdout, as agents start their tools:

  {"mcpServers": {"banger": {"command": "banger", "args": ["mcp"]}}}

With --http ADDR (e.g. 127.0.0.1:8765) it serves streamable HTTP at
http://ADDR/mcp instead, for clients that connect to a URL; every request
must carry the bearer token it prints on stderr (or $BANGER_MCP_TOKEN).
It runs as you: it ships repositories and writes patches and branches as
you, and talks to bangerd like the CLI does.`,
		Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			s := bmcp.New(bmcp.Options{Client: cl, Layout: e.layout})
			if httpAddr == "" {
				return s.MCP().Run(c.Context(), &mcp.StdioTransport{})
			}
			token := strings.TrimSpace(os.Getenv("BANGER_MCP_TOKEN"))
			if token == "" {
				b := make([]byte, 24)
				rand.Read(b)
				token = hex.EncodeToString(b)
			}
			ln, err := net.Listen("tcp", httpAddr)
			if err != nil {
				return usageError{fmt.Errorf("--http %q: %w", httpAddr, err)}
			}
			h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s.MCP() }, nil)
			mux := http.NewServeMux()
			mux.Handle("/mcp", requireToken(token, h))
			fmt.Fprintf(e.stderr, "banger: MCP over streamable HTTP at http://%s/mcp\nbanger: Authorization: Bearer %s\n", ln.Addr(), token)
			srv := &http.Server{Handler: mux}
			go func() {
				<-c.Context().Done()
				srv.Close()
			}()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&httpAddr, "http", "", "serve streamable HTTP on ADDR (host:port) instead of stdio")
	return cmd
}

// requireToken refuses requests without the bearer token.
func requireToken(token string, next http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			http.Error(w, "banger mcp: a bearer token is required (printed when the server started)", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}
