package procfs

import (
	"bufio"
	"io"
	"os"
	"strconv"
	"strings"
)

// Listening reports whether a unix socket bound to path is listening in
// this network namespace (from /proc/net/unix; without connecting, which
// would disturb a one-client chardev).
func Listening(path string) bool {
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, 64<<20))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for sc.Scan() {
		// Num RefCount Protocol Flags Type St Inode Path
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 || fields[7] != path {
			continue
		}
		if flags, err := strconv.ParseUint(fields[3], 16, 32); err == nil && flags&0x10000 != 0 { // __SO_ACCEPTCON
			return true
		}
	}
	return false
}
