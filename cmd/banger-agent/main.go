// Command banger-agent is banger's guest agent. As PID 1 (the initramfs's
// /init) it boots the guest and serves the host; started any other way it
// only serves. `banger-agent version` prints its version.
package main

import (
	"fmt"
	"os"

	"github.com/banger-sh/banger/internal/agent"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Println(agent.Version)
		return
	}
	if os.Getpid() == 1 {
		agent.RunInit() // never returns
	}
	if err := agent.RunService(); err != nil {
		fmt.Fprintln(os.Stderr, "banger-agent:", err)
		os.Exit(1)
	}
}
