package vmm

import (
	"os"

	"github.com/banger-sh/banger/internal/vmm/procfs"
)

// RemoveStaleSockets removes h's socket files unless a process still
// listens on them (so a stale handle never breaks a live VM that reuses
// the runtime dir).
func RemoveStaleSockets(h Handle) {
	for _, s := range []string{h.ControlSocket, h.AgentSocket} {
		if s == "" || procfs.Listening(s) {
			continue
		}
		_ = os.Remove(s)
	}
}
