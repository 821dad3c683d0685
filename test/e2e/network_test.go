package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/system"
)

func vmInfo(t *testing.T, h *harness, name string) api.VM {
	t.Helper()
	var v api.VM
	if err := json.Unmarshal([]byte(h.must(t, "vm", "show", "--json", name)), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestSSHQuotingAndExitCode(t *testing.T) {
	h, vm := sharedVM(t)
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"sh", "-c", "exit 42"}, 42, ""},
		{[]string{"sh", "-c", `echo "a b"`}, 0, "a b\n"},
		{[]string{"hostname"}, 0, vm + "\n"},
		{[]string{"printf", "%s|", "x y", "$HOME", "it's"}, 0, "x y|$HOME|it's|"},
	} {
		r, code := h.run(t, nil, append([]string{"vm", "ssh", vm, "--"}, tc.args...)...)
		if code != tc.code || (tc.out != "" && r.stdout != tc.out) {
			t.Errorf("vm ssh -- %q: exit %d stdout %q stderr %q; want %d %q", tc.args, code, r.stdout, r.stderr, tc.code, tc.out)
		}
	}
}

func TestDNSAnswersVMNames(t *testing.T) {
	h, vm := sharedVM(t)
	v := vmInfo(t, h, vm)
	if v.IP == "" || v.MAC == "" || v.Tap == "" || v.Net != "nat" {
		t.Fatalf("vm show lacks network details: %+v", v)
	}
	port := strconv.Itoa(h.dns)
	for _, proto := range []string{"+notcp", "+tcp"} {
		out, err := system.Run(t.Context(), "dig", "+short", proto, "@127.0.0.1", "-p", port, vm+".vm")
		if err != nil || strings.TrimSpace(string(out)) != v.IP {
			t.Errorf("dig %s %s.vm: %q %v, want %s", proto, vm, out, err, v.IP)
		}
	}
	out, err := system.Run(t.Context(), "dig", "+short", "@127.0.0.1", "-p", port, "-x", v.IP)
	if err != nil || strings.TrimSpace(string(out)) != vm+".vm." {
		t.Errorf("dig -x %s: %q %v", v.IP, out, err)
	}
	out, _ = system.Run(t.Context(), "dig", "@127.0.0.1", "-p", port, "no-such-vm.vm")
	if !strings.Contains(string(out), "NXDOMAIN") {
		t.Errorf("unknown name: %s", out)
	}
	// The guest resolves VM names through the same server.
	if r, code := h.run(t, nil, "vm", "exec", vm, "--", "getent", "hosts", vm+".vm"); code != 0 || !strings.Contains(r.stdout, v.IP) {
		t.Errorf("guest getent: exit %d %q %s", code, r.stdout, r.stderr)
	}
}

// perlServer serves one line per connection on port in the guest, in the
// background.
func perlServer(port int, reply string) []string {
	return []string{"sh", "-c", fmt.Sprintf(`nohup perl -MIO::Socket::INET -e '$s=IO::Socket::INET->new(LocalPort=>%d,Listen=>5,ReuseAddr=>1) or die; while($c=$s->accept){ $c->print("HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s"); close $c }' >/dev/null 2>&1 &`, port, len(reply), reply)}
}

// perlConnect exits 0 when a TCP connection to addr:port succeeds within
// 3 seconds.
func perlConnect(addr string, port int) []string {
	return []string{"perl", "-MIO::Socket::INET", "-e", fmt.Sprintf(`exit(IO::Socket::INET->new(PeerAddr=>"%s",PeerPort=>%d,Timeout=>3) ? 0 : 1)`, addr, port)}
}

func TestPortForwardServesFromGuest(t *testing.T) {
	h, vm := sharedVM(t)
	h.must(t, append([]string{"vm", "exec", "-n", vm, "--"}, perlServer(8080, "hello from guest")...)...)
	hostPort := freeTCPPort(t)
	f := strings.TrimSpace(h.must(t, "vm", "port", vm, fmt.Sprintf("%d:8080", hostPort)))
	if f != fmt.Sprintf("127.0.0.1:%d:8080", hostPort) {
		t.Fatalf("vm port printed %q", f)
	}
	var body string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", hostPort))
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if body != "hello from guest" {
		t.Fatalf("through the forward: %q", body)
	}
	if v := vmInfo(t, h, vm); len(v.Forwards) != 1 || v.Forwards[0] != f {
		t.Fatalf("vm show forwards: %v", v.Forwards)
	}
}

func freeTCPPort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestIsolation: a guest reaches neither the host's own services nor
// another guest; VMs created at once get distinct addresses.
func TestIsolation(t *testing.T) {
	h, vm := sharedVM(t)
	a := vmInfo(t, h, vm)
	// A host service on all addresses, including the bridge's.
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	hostPort := l.Addr().(*net.TCPAddr).Port
	gw := a.IP[:strings.LastIndex(a.IP, ".")] + ".1"
	if _, code := h.run(t, nil, append([]string{"vm", "exec", vm, "--"}, perlConnect(gw, hostPort)...)...); code == 0 {
		t.Errorf("guest reached a host service on %s:%d", gw, hostPort)
	}
	// Control: the host itself can connect, so the block is the firewall's.
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", gw, hostPort), 3*time.Second); err != nil {
		t.Fatalf("control connection from the host failed: %v", err)
	} else {
		c.Close()
	}

	// Two more VMs at once: distinct leases; neither reaches the other.
	var wg sync.WaitGroup
	codes := make([]int, 2)
	names := []string{"iso-b", "iso-c"}
	for i, n := range names {
		wg.Add(1)
		go func(i int, n string) {
			defer wg.Done()
			_, codes[i] = h.run(t, nil, "vm", "create", n)
		}(i, n)
	}
	wg.Wait()
	defer h.run(t, nil, "vm", "delete", "--force", "iso-b", "iso-c")
	if codes[0] != 0 || codes[1] != 0 {
		t.Fatalf("creates: %v", codes)
	}
	b, c := vmInfo(t, h, "iso-b"), vmInfo(t, h, "iso-c")
	if b.IP == c.IP || b.IP == a.IP || c.IP == a.IP || b.MAC == c.MAC || b.Tap == c.Tap {
		t.Fatalf("leases not distinct: %s %s %s", a.IP, b.IP, c.IP)
	}
	h.must(t, append([]string{"vm", "exec", "-n", "iso-c", "--"}, perlServer(9090, "c")...)...)
	time.Sleep(500 * time.Millisecond)
	if _, code := h.run(t, nil, append([]string{"vm", "exec", "iso-c", "--"}, perlConnect("127.0.0.1", 9090)...)...); code != 0 {
		t.Fatalf("control: iso-c cannot reach its own server")
	}
	if _, code := h.run(t, nil, append([]string{"vm", "exec", "iso-b", "--"}, perlConnect(c.IP, 9090)...)...); code == 0 {
		t.Errorf("guest iso-b reached guest iso-c at %s:9090", c.IP)
	}
	if conn, err := net.DialTimeout("tcp", c.IP+":9090", 3*time.Second); err != nil {
		t.Errorf("control: the host cannot reach iso-c's server: %v", err)
	} else {
		conn.Close()
	}
}

// TestSharedNetwork: a shared VM reaches another shared VM; a nat VM
// reaches neither, until `vm set --net shared` lets it in, live, and
// `vm set --net none` shuts it out again.
func TestSharedNetwork(t *testing.T) {
	h := env(t)
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i, spec := range [][]string{{"sh-a", "shared"}, {"sh-b", "nat"}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, codes[i] = h.run(t, nil, "vm", "create", spec[0], "--net", spec[1])
		}()
	}
	wg.Wait()
	defer h.run(t, nil, "vm", "delete", "--force", "sh-a", "sh-b")
	if codes[0] != 0 || codes[1] != 0 {
		t.Fatalf("creates: %v", codes)
	}
	a, b := vmInfo(t, h, "sh-a"), vmInfo(t, h, "sh-b")
	if a.Net != "shared" || b.Net != "nat" {
		t.Fatalf("net: sh-a %q sh-b %q", a.Net, b.Net)
	}
	for _, n := range []string{"sh-a", "sh-b"} {
		h.must(t, append([]string{"vm", "exec", "-n", n, "--"}, perlServer(9191, n)...)...)
	}
	time.Sleep(500 * time.Millisecond)
	reaches := func(from, to string) bool {
		_, code := h.run(t, nil, append([]string{"vm", "exec", from, "--"}, perlConnect(to, 9191)...)...)
		return code == 0
	}
	if !reaches("sh-a", "127.0.0.1") || !reaches("sh-b", "127.0.0.1") {
		t.Fatal("control: a guest cannot reach its own server")
	}
	if reaches("sh-b", a.IP) || reaches("sh-a", b.IP) {
		t.Errorf("nat sh-b and shared sh-a reach each other")
	}
	if out := h.must(t, "vm", "set", "sh-b", "--net", "shared"); !strings.Contains(out, "net shared") {
		t.Errorf("vm set --net shared printed %q", out)
	}
	if v := vmInfo(t, h, "sh-b"); v.Net != "shared" || v.IP != b.IP || v.State != "running" {
		t.Errorf("after set: net %q ip %s (was %s) state %s", v.Net, v.IP, b.IP, v.State)
	}
	if !reaches("sh-b", a.IP) || !reaches("sh-a", b.IP) {
		t.Errorf("shared sh-a and sh-b do not reach each other")
	}
	h.must(t, "vm", "set", "sh-b", "--net", "none")
	if reaches("sh-b", a.IP) || reaches("sh-a", b.IP) {
		t.Errorf("none sh-b and shared sh-a reach each other")
	}
	if r, code := h.run(t, nil, "vm", "set", "sh-b", "--net", "bridge"); code != 1 || !strings.Contains(r.stderr, "nat, none, shared") {
		t.Errorf("vm set --net bridge: exit %d %q", code, r.stderr)
	}
}
