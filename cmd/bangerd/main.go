// Command bangerd is banger's daemon; see internal/daemon. It runs in the
// foreground; `banger daemon start` (or any banger command) starts it in
// the background.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/banger-sh/banger/internal/config"
	"github.com/banger-sh/banger/internal/daemon"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/version"
)

func main() {
	daemon.CloseInheritedFDs()
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "--version", "version":
			fmt.Printf("bangerd %s (commit %s, api %s)\n", version.Version, version.Commit, version.APIVersion)
			return
		default:
			fmt.Fprintf(os.Stderr, "usage: bangerd [--version]\n(bangerd takes no arguments: configure it in config.toml; see 'banger config example')\n")
			os.Exit(2)
		}
	}
	l, err := paths.FromEnv()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bangerd: %v\n", err)
		os.Exit(1)
	}
	cfg, err := config.Load(l.ConfigFile())
	if err != nil {
		fmt.Fprintf(os.Stderr, "bangerd: %v\n", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := daemon.Run(ctx, daemon.Options{Layout: l, Config: cfg}); err != nil {
		fmt.Fprintf(os.Stderr, "bangerd: %v\n", err)
		os.Exit(1)
	}
}
