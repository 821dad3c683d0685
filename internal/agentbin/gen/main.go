// Command gen builds the guest agent (cmd/banger-agent, static) into
// internal/agentbin/dist/, where internal/agentbin embeds it, and records
// the digest of the sources it was built from. It is run by
//
//	go generate ./internal/agentbin
//
// (make build runs it too). $BANGER_VERSION, when set, is the version the
// agent reports; otherwise `git describe`.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-sh/banger/internal/agentbin/sources"
	"github.com/banger-sh/banger/internal/system"
)

func main() {
	if err := run(context.Background()); err != nil {
		fmt.Fprintf(os.Stderr, "agentbin/gen: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	// go generate runs this in internal/agentbin.
	gomod, err := system.Run(ctx, "go", "env", "GOMOD")
	if err != nil {
		return err
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	dist := filepath.Join(root, "internal", "agentbin", "dist")
	version := os.Getenv("BANGER_VERSION")
	if version == "" {
		out, err := system.RunOpts(ctx, system.Opts{Dir: root}, "git", "describe", "--always", "--dirty")
		version = strings.TrimSpace(string(out))
		if err != nil || version == "" {
			version = "dev"
		}
	}
	tmp := filepath.Join(dist, ".banger-agent.tmp")
	defer os.Remove(tmp)
	if _, err := system.RunOpts(ctx, system.Opts{Dir: root, Env: []string{"CGO_ENABLED=0", "GOOS=linux"}},
		"go", "build", "-trimpath", "-ldflags", "-s -w -X github.com/banger-sh/banger/internal/agent.Version="+version,
		"-o", tmp, "./cmd/banger-agent"); err != nil {
		return err
	}
	sum, err := sources.Digest(ctx, root)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dist, "banger-agent")); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dist, "banger-agent.sources"), []byte(sum+"\n"), 0o644)
}
