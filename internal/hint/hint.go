// Package hint says what to do about an error, for people (the CLI prints
// it under the error) and for agents (the MCP server returns it with the
// error): chosen by the error's class alone, never by its text. Each class
// has one (TestHintForEveryClass).
package hint

import (
	"errors"
	"fmt"

	"github.com/banger-sh/banger/internal/errdefs"
)

// For returns the hint for err; daemonLog is bangerd's log file.
func For(err error, daemonLog string) string {
	switch {
	case errors.Is(err, errdefs.ErrDaemonUnreachable):
		return fmt.Sprintf("bangerd's log is %s ('banger daemon logs'); 'banger daemon status' says whether it runs", daemonLog)
	case errors.Is(err, errdefs.ErrMissingDependency):
		return "install the packages named above (from banger's source tree, scripts/setup-host installs everything); 'banger doctor' lists what this host lacks"
	case errors.Is(err, errdefs.ErrNotRunning):
		return "start it with 'banger vm start NAME'"
	case errors.Is(err, errdefs.ErrNotFound):
		return "check the name: 'banger vm ls', 'banger image ls' and 'banger run ls' list what exists"
	case errors.Is(err, errdefs.ErrAlreadyExists):
		return "choose another name, or remove the existing one first"
	case errors.Is(err, errdefs.ErrConflict):
		return "the current state does not allow this (see above); 'banger vm show NAME' shows a VM's state"
	case errors.Is(err, errdefs.ErrInvalidArgument):
		return "'banger help COMMAND' says what each argument and flag takes"
	case errors.Is(err, errdefs.ErrUnavailable):
		return "'banger doctor' checks what this host can do; 'banger vm logs NAME' shows a VM's console"
	case errors.Is(err, errdefs.ErrInternal):
		return fmt.Sprintf("this is a bug in banger; bangerd's log is %s ('banger daemon logs')", daemonLog)
	}
	return ""
}
