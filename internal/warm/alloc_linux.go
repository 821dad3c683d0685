package warm

import (
	"os"
	"syscall"
)

// allocated is the disk space path's blocks take (0 if unknown).
func allocated(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
