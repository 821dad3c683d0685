package daemon

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// CloseInheritedFDs closes the file descriptors above stderr that this
// process inherited (every descriptor Go opens is close-on-exec; one that
// is not came from whoever started us). bangerd outlives the command that
// starts it: an inherited descriptor — a lock the caller holds, a pipe a
// test reads to its end, a terminal — would be kept open for as long as
// the daemon runs, and passed on to every VMM it starts. Call it first
// thing in main.
func CloseInheritedFDs() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue // gone (the directory read itself), or ours
		}
		unix.Close(fd)
	}
}
