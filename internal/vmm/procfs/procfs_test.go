package procfs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeRoot makes a tree with the given files (path -> content; a path
// ending in "/" is a directory).
func fakeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, p)
		if strings.HasSuffix(p, "/") {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestParseStat(t *testing.T) {
	tail := " S 1 4242 4242 0 -1 4194560 100 0 0 0 10 5 0 0 20 0 3 0 987654 123456789 1000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 17 1 0 0 0 0 0"
	cases := []struct {
		name string
		in   string
		want Stat
		bad  bool
	}{
		{"plain", "4242 (qemu-system-x86)" + tail, Stat{'S', 4242, 3, 987654}, false},
		{"spaces and parens in comm", "4242 (evil) S 1 2 3 (x)" + tail, Stat{'S', 4242, 3, 987654}, false},
		{"zombie", "7 (banger-t1) Z 1 7 7 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0", Stat{'Z', 7, 1, 55}, false},
		{"no comm", "4242 S 1", Stat{}, true},
		{"truncated", "4242 (q) S 1 2", Stat{}, true},
		{"bad starttime", "4242 (q) S 1 4242 4242 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 notanumber 0", Stat{}, true},
		{"empty", "", Stat{}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseStat([]byte(c.in))
			if c.bad {
				if err == nil {
					t.Errorf("parsed %+v, want error", got)
				}
				return
			}
			if err != nil || got != c.want {
				t.Errorf("got %+v, %v; want %+v", got, err, c.want)
			}
		})
	}
}

func TestProcAlive(t *testing.T) {
	p := Proc{Root: "/proc"}
	boot, err := p.BootID()
	if err != nil {
		t.Fatal(err)
	}
	self, err := p.Stat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Alive(os.Getpid(), self.StartTime, boot); !ok {
		t.Error("this process is not alive")
	}
	if _, ok := p.Alive(os.Getpid(), self.StartTime+1, boot); ok {
		t.Error("wrong start time taken for the same process")
	}
	if _, ok := p.Alive(os.Getpid(), self.StartTime, "other-boot"); ok {
		t.Error("wrong boot id taken for the same process")
	}
	if _, ok := p.Alive(0, 0, boot); ok {
		t.Error("pid 0 alive")
	}
	// A fake /proc: pid 99 with a reused pid (different start time); pid
	// 98 exiting (main thread a zombie, 4 threads left); pid 97 exited.
	root := fakeRoot(t, map[string]string{
		"sys/kernel/random/boot_id": "b00t\n",
		"99/stat":                   "99 (bash) S 1 99 99 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0",
		"98/stat":                   "98 (qemu) Z 1 98 98 0 -1 0 0 0 0 0 0 0 0 0 20 0 4 0 777 0 0",
		"97/stat":                   "97 (qemu) Z 1 97 97 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0",
	})
	fp := Proc{Root: root}
	if _, ok := fp.Alive(99, 777, "b00t"); !ok {
		t.Error("fake pid 99 not alive")
	}
	if _, ok := fp.Alive(99, 776, "b00t"); ok {
		t.Error("reused pid taken for the VM")
	}
	if _, ok := fp.Alive(98, 777, "b00t"); !ok {
		t.Error("process with a zombie main thread and live threads taken for gone")
	}
	if _, ok := fp.Alive(97, 777, "b00t"); ok {
		t.Error("zombie taken for alive")
	}
	if _, ok := fp.Alive(100, 777, "b00t"); ok {
		t.Error("missing pid alive")
	}
}
