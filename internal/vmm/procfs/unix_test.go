package procfs

import (
	"net"
	"path/filepath"
	"testing"
)

// TestListening: a bound, listening unix socket is seen; once closed (or
// never bound) it is not.
func TestListening(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.sock")
	if Listening(p) {
		t.Fatal("a path with no socket listens")
	}
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	if !Listening(p) {
		t.Error("a listening socket is not seen")
	}
	l.Close()
	if Listening(p) {
		t.Error("a closed socket still listens")
	}
}
