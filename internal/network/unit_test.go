package network

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/store"
)

func TestMACFor(t *testing.T) {
	a, b := MACFor("0123456789abcdef"), MACFor("0123456789abcdee")
	if a == b || !strings.HasPrefix(a, "52:54:") || len(a) != 17 {
		t.Fatalf("MACFor: %s %s", a, b)
	}
	if MACFor("0123456789abcdef") != a {
		t.Fatal("MACFor is not stable")
	}
}

func TestParseEgress(t *testing.T) {
	for _, tc := range []struct {
		in            string
		out, isolated bool
	}{{"nat", true, true}, {"none", false, true}, {"shared", true, false}} {
		e, err := ParseEgress(tc.in)
		if err != nil || string(e) != tc.in || e.out() != tc.out || e.isolated() != tc.isolated {
			t.Errorf("%s: %q %v out %v isolated %v", tc.in, e, err, e.out(), e.isolated())
		}
	}
	_, err := ParseEgress("bridge")
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "nat, none, shared") {
		t.Fatalf("bridge: %v", err)
	}
}

func TestPickAddr(t *testing.T) {
	m, err := New(Options{Subnet: netip.MustParsePrefix("10.9.0.0/29"), Store: &store.Store{}})
	if err != nil {
		t.Fatal(err)
	}
	// /29: .0 network, .1 bridge, .2-.6 guests, .7 broadcast.
	for _, tc := range []struct {
		used []string
		last string
		want string
	}{
		{nil, "", "10.9.0.2"},
		{nil, "10.9.0.2", "10.9.0.3"},
		{[]string{"10.9.0.3"}, "10.9.0.2", "10.9.0.4"},
		{nil, "10.9.0.6", "10.9.0.2"}, // wraps, skipping broadcast and bridge
		{[]string{"10.9.0.2", "10.9.0.3"}, "10.9.0.6", "10.9.0.4"},
		{[]string{"10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5"}, "10.9.0.5", "10.9.0.6"},
		{nil, "192.168.0.9", "10.9.0.2"}, // cursor from another subnet
		{[]string{"10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"}, "10.9.0.4", ""},
	} {
		used := map[string]bool{}
		for _, u := range tc.used {
			used[u] = true
		}
		got, err := m.pickAddr(used, tc.last)
		if tc.want == "" {
			if err == nil {
				t.Errorf("used %v: got %s, want full", tc.used, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("used %v last %q: got %q %v, want %s", tc.used, tc.last, got, err, tc.want)
		}
	}
}

func TestParseForwardSpec(t *testing.T) {
	for _, tc := range []struct {
		in    string
		host  string
		guest uint16
		bad   bool
	}{
		{"8080:80", "127.0.0.1:8080", 80, false},
		{"0.0.0.0:8080:80", "0.0.0.0:8080", 80, false},
		{"[::1]:8080:80", "[::1]:8080", 80, false},
		{"80", "", 0, true},
		{"a:80", "", 0, true},
		{"8080:0", "", 0, true},
		{"x.y:1:2", "", 0, true},
	} {
		h, g, err := ParseForwardSpec(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("%q: no error", tc.in)
			}
			continue
		}
		if err != nil || h.String() != tc.host || g != tc.guest {
			t.Errorf("%q: got %s %d %v", tc.in, h, g, err)
		}
	}
}

func TestCheckHostResolver(t *testing.T) {
	dns := netip.MustParseAddrPort("172.30.0.1:42069")
	write := func(root, rel, s string) {
		p := filepath.Join(root, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("no resolved", func(t *testing.T) {
		st := CheckHostResolver(t.TempDir(), "bgr0", dns, "vm")
		if st.Configured || !strings.Contains(st.Detail, "dnsmasq") || len(st.Fix) != 2 {
			t.Fatalf("%+v", st)
		}
	})
	t.Run("configured", func(t *testing.T) {
		root := t.TempDir()
		write(root, "sys/class/net/bgr0/ifindex", "7\n")
		write(root, "run/systemd/resolve/netif/7", "# This is private data. Do not parse.\nLLMNR=yes\nSERVERS=172.30.0.1:42069\nDOMAINS=~vm\n")
		if st := CheckHostResolver(root, "bgr0", dns, "vm"); !st.Configured {
			t.Fatalf("%+v", st)
		}
	})
	t.Run("server with ifindex and name", func(t *testing.T) {
		root := t.TempDir()
		write(root, "sys/class/net/bgr0/ifindex", "7\n")
		write(root, "run/systemd/resolve/netif/7", "SERVERS=1.1.1.1 172.30.0.1:42069%7#x\nDOMAINS=other ~vm.\n")
		if st := CheckHostResolver(root, "bgr0", dns, "vm"); !st.Configured {
			t.Fatalf("%+v", st)
		}
	})
	t.Run("wrong port", func(t *testing.T) {
		root := t.TempDir()
		write(root, "sys/class/net/bgr0/ifindex", "7\n")
		write(root, "run/systemd/resolve/netif/7", "SERVERS=172.30.0.1\nDOMAINS=~vm\n")
		st := CheckHostResolver(root, "bgr0", dns, "vm")
		if st.Configured || st.Fix[0] != "resolvectl dns bgr0 172.30.0.1:42069" {
			t.Fatalf("%+v", st)
		}
	})
	t.Run("no domain", func(t *testing.T) {
		root := t.TempDir()
		write(root, "sys/class/net/bgr0/ifindex", "7\n")
		write(root, "run/systemd/resolve/netif/7", "SERVERS=172.30.0.1:42069\n")
		st := CheckHostResolver(root, "bgr0", dns, "vm")
		if st.Configured || len(st.Fix) != 1 || st.Fix[0] != "resolvectl domain bgr0 ~vm" {
			t.Fatalf("%+v", st)
		}
	})
	t.Run("no link state", func(t *testing.T) {
		root := t.TempDir()
		write(root, "sys/class/net/bgr0/ifindex", "7\n")
		os.MkdirAll(filepath.Join(root, "run/systemd/resolve"), 0o755)
		if st := CheckHostResolver(root, "bgr0", dns, "vm"); st.Configured {
			t.Fatalf("%+v", st)
		}
	})
}

func TestResolvConfServers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte("# x\nsearch lan\nnameserver 10.255.255.53\nnameserver ::1\nnameserver bogus\noptions edns0\n"), 0o644)
	got := strings.Join(ResolvConfServers(p), ",")
	if got != "10.255.255.53:53,[::1]:53" {
		t.Fatal(got)
	}
	_ = context.Background
}
