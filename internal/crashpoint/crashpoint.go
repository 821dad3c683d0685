// Package crashpoint is a test-only fault injector: a daemon started with
// BANGER_TEST_CRASHPOINT=NAME kills itself with SIGKILL the first time
// it reaches Hit(NAME), so a test can prove that every step of an
// operation is safe to die at (nothing half done after the restart).
// Without the variable, Hit does nothing.
package crashpoint

import (
	"os"
	"syscall"
)

// Env names the variable read once at start.
const Env = "BANGER_TEST_CRASHPOINT"

// point is set once, before main, and never written again.
var point = os.Getenv(Env)

// Hit kills this process at once (SIGKILL: no deferred call, no cleanup,
// as a power cut or the OOM killer would) when name is the armed point.
func Hit(name string) {
	if point != "" && name == point {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is delivered before this returns
	}
}

// Armed reports whether name is the armed point (for tests of the hook).
func Armed(name string) bool { return point != "" && name == point }

// BootIDEnv names the variable that replaces the host's boot id
// (/proc/sys/kernel/random/boot_id) for the daemon: a test restarts the
// daemon with a new one to play a host reboot.
const BootIDEnv = "BANGER_TEST_BOOT_ID"

// bootID is set once, before main, and never written again.
var bootID = os.Getenv(BootIDEnv)

// BootID is the boot id a test imposes, or "" (read the real one).
func BootID() string { return bootID }
