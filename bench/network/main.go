// Command network benchmarks banger's VM networking (issue 7), in one run
// on one host, and prints a table of medians (with min and max):
//
//   - what networking adds to a create: API creates with --net nat and
//     --net none against --net off (no NIC: no tap, lease or rules), all
//     warm restores of one template (vm.spares = 0, so that every create
//     restores), interleaved so that host load hits them alike;
//   - the host side of it in process: network.Manager.Attach (tap from the
//     pool, lease in SQLite, nftables rules) and Detach, on a bridge of
//     the bench's own, as bangerd calls them;
//   - DNS answers for NAME.vm from banger's server on 127.0.0.1: `dig` in a
//     loop (its own "Query time", ms resolution) and a Go client (UDP and
//     TCP, µs resolution), p50 and p99.
//
// Everything runs under an isolated BANGER_HOME with its own bridge, taps,
// nftables table and DNS port, and the shared test image
// (internal/image/imagetest) imported as "default". Binaries come from
// $BANGER_TEST_BIN or are built with `make build`.
//
//	go run ./bench/network [-n 10] [-q 1000]
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/client"
	"github.com/banger-sh/banger/internal/image/imagetest"
	"github.com/banger-sh/banger/internal/network"
	"github.com/banger-sh/banger/internal/store"
	"github.com/banger-sh/banger/internal/system"
)

const dnsPort = 42269

func main() {
	n := flag.Int("n", 10, "creates per --net value")
	q := flag.Int("q", 1000, "DNS queries per Go client measurement (dig: q/20)")
	flag.Parse()
	b := &bench{}
	err := b.run(*n, *q)
	b.cleanup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "network:", err)
		os.Exit(1)
	}
}

type bench struct {
	home, bin string
	cl        *client.Client
}

func (b *bench) banger(args ...string) (string, error) {
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	_, err := system.RunOpts(ctx, system.Opts{Env: []string{"BANGER_HOME=" + b.home, "BANGER_BANGERD=" + filepath.Join(b.bin, "bangerd")}, Stdout: &out, Stderr: &errb},
		append([]string{filepath.Join(b.bin, "banger")}, args...)...)
	if err != nil {
		return out.String(), fmt.Errorf("banger %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

func (b *bench) run(n, q int) error {
	var err error
	if b.home, err = os.MkdirTemp("", "bgnet"); err != nil {
		return err
	}
	cfg := fmt.Sprintf("[vm]\nspares = 0\n[network]\nsubnet = \"172.31.252.0/24\"\ndns_port = %d\nbridge = \"bgnbench0\"\ntap_prefix = \"bgnb\"\nnft_table = \"bangernetbench\"\n", dnsPort)
	os.MkdirAll(filepath.Join(b.home, "config"), 0o755)
	if err := os.WriteFile(filepath.Join(b.home, "config", "config.toml"), []byte(cfg), 0o644); err != nil {
		return err
	}
	if b.bin = os.Getenv("BANGER_TEST_BIN"); b.bin == "" {
		b.bin = filepath.Join(b.home, "bin")
		root, _ := filepath.Abs(".")
		if _, err := system.RunOpts(context.Background(), system.Opts{Dir: root}, "make", "build", "BIN="+b.bin); err != nil {
			return fmt.Errorf("make build (run from the repository's root): %w", err)
		}
	}
	img, err := testImage()
	if err != nil {
		return err
	}
	if _, err := b.banger("image", "import", "default", "--kernel", filepath.Join(img, "vmlinux"),
		"--rootfs", filepath.Join(img, "rootfs.ext4"), "--modules", filepath.Join(img, "modules")); err != nil {
		return err
	}
	if _, err := b.banger("image", "warm", "default"); err != nil {
		return err
	}
	b.cl = client.New(filepath.Join(b.home, "run", "bangerd.sock"))
	ctx := context.Background()

	att, det, err := hostSide(ctx, b.home, 3*n)
	if err != nil {
		return fmt.Errorf("attach/detach: %w", err)
	}

	// Creates: off, nat, none interleaved; one warm-up of each first.
	nets := []string{"off", "nat", "none"}
	times := map[string][]time.Duration{}
	for i := -1; i < n; i++ {
		for _, nt := range nets {
			name := fmt.Sprintf("n%s%d", nt, i+1)
			t0 := time.Now()
			v, err := b.cl.CreateVM(ctx, api.CreateVMRequest{Name: name, Net: nt}, nil)
			d := time.Since(t0)
			if err != nil {
				return fmt.Errorf("create --net %s: %w", nt, err)
			}
			if v.Boot != "warm" {
				return fmt.Errorf("create --net %s booted %s, want warm", nt, v.Boot)
			}
			if err := b.cl.DeleteVM(ctx, name, true); err != nil {
				return err
			}
			if i >= 0 {
				times[nt] = append(times[nt], d)
			}
		}
	}

	// DNS: one VM to name.
	if _, err := b.cl.CreateVM(ctx, api.CreateVMRequest{Name: "dnsvm"}, nil); err != nil {
		return err
	}
	var digT []time.Duration
	re := regexp.MustCompile(`Query time: (\d+) msec`)
	for i := 0; i < max(q/20, 20); i++ {
		out, err := system.Run(ctx, "dig", "@127.0.0.1", "-p", strconv.Itoa(dnsPort), "+tries=1", "+time=2", "dnsvm.vm", "A")
		if err != nil {
			return fmt.Errorf("dig: %w", err)
		}
		m := re.FindSubmatch(out)
		if m == nil || !bytes.Contains(out, []byte("status: NOERROR")) || !bytes.Contains(out, []byte("ANSWER: 1")) {
			return fmt.Errorf("dig dnsvm.vm: unexpected answer:\n%s", out)
		}
		ms, _ := strconv.Atoi(string(m[1]))
		digT = append(digT, time.Duration(ms)*time.Millisecond)
	}
	udp, err := query("udp", q)
	if err != nil {
		return err
	}
	tcp, err := query("tcp", q)
	if err != nil {
		return err
	}

	fmt.Printf("\nbanger network benchmark, %s, %d creates per --net value (interleaved), QEMU warm restores (vm.spares = 0)\n\n", time.Now().UTC().Format(time.RFC3339), n)
	fmt.Println("| measure | p50 | min | max | p99 | n |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, nt := range nets {
		fmt.Println(line(fmt.Sprintf("create --net %s (API, warm)", nt), times[nt]))
	}
	off := median(times["off"])
	for _, nt := range []string{"nat", "none"} {
		fmt.Printf("| added by networking, --net %s (median − median of off) | %s | | | | target ≤ 20 ms |\n", nt, fmtD(median(times[nt])-off))
		var diff []time.Duration
		for i := range times[nt] {
			diff = append(diff, times[nt][i]-times["off"][i])
		}
		fmt.Println(line(fmt.Sprintf("  paired per round, --net %s − off", nt), diff))
	}
	fmt.Println(line("host side: Attach (pool tap, lease, rules)", att))
	fmt.Println(line("host side: Detach (rules, tap, lease)", det))
	fmt.Println(line("DNS dnsvm.vm, dig's query time (ms resolution)", digT))
	fmt.Println(line("DNS dnsvm.vm, Go client over UDP", udp))
	fmt.Println(line("DNS dnsvm.vm, Go client over TCP (new connection each)", tcp))
	return nil
}

// hostSide times n Attach and n Detach calls of a network.Manager of its
// own (bridge bgnbench1, 172.31.253.0/24), pool kept full between them.
func hostSide(ctx context.Context, dir string, n int) (att, det []time.Duration, err error) {
	st, err := store.Open(ctx, filepath.Join(dir, "attach.db"))
	if err != nil {
		return nil, nil, err
	}
	defer st.Close()
	m, err := network.New(network.Options{Subnet: netip.MustParsePrefix("172.31.253.0/24"), BridgeName: "bgnbench1",
		TapPrefix: "bgnc", Table: "bangernetbench1", DNSPort: dnsPort + 1, Store: st})
	if err != nil {
		return nil, nil, err
	}
	if err := m.Start(ctx); err != nil {
		return nil, nil, err
	}
	defer m.Teardown(context.WithoutCancel(ctx))
	for i := 0; i < n; i++ {
		for deadline := time.Now().Add(5 * time.Second); m.PoolLen() < 2 && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		id := fmt.Sprintf("bench%d", i)
		t0 := time.Now()
		if _, err := m.Attach(ctx, id, network.EgressNAT); err != nil {
			return nil, nil, err
		}
		att = append(att, time.Since(t0))
		t0 = time.Now()
		if err := m.Detach(ctx, id); err != nil {
			return nil, nil, err
		}
		det = append(det, time.Since(t0))
	}
	return att, det, nil
}

// query asks for dnsvm.vm q times over proto and returns each round trip.
func query(proto string, q int) ([]time.Duration, error) {
	c := &dns.Client{Net: proto, Timeout: 2 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion("dnsvm.vm.", dns.TypeA)
	var out []time.Duration
	for i := 0; i < q; i++ {
		r, rtt, err := c.Exchange(m, net.JoinHostPort("127.0.0.1", strconv.Itoa(dnsPort)))
		if err != nil {
			return nil, fmt.Errorf("dns over %s: %w", proto, err)
		}
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			return nil, fmt.Errorf("dns over %s: %s", proto, r)
		}
		out = append(out, rtt)
	}
	return out, nil
}

func sorted(v []time.Duration) []time.Duration {
	v = append([]time.Duration(nil), v...)
	sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
	return v
}

func median(v []time.Duration) time.Duration {
	s := sorted(v)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func line(name string, v []time.Duration) string {
	s := sorted(v)
	if len(s) == 0 {
		return fmt.Sprintf("| %s | – | | | | 0 |", name)
	}
	p99 := s[min(len(s)-1, len(s)*99/100)]
	return fmt.Sprintf("| %s | **%s** | %s | %s | %s | %d |", name, fmtD(median(v)), fmtD(s[0]), fmtD(s[len(s)-1]), fmtD(p99), len(s))
}

func fmtD(d time.Duration) string {
	switch {
	case d < 0:
		return "−" + fmtD(-d)
	case d < time.Millisecond:
		return fmt.Sprintf("%d µs", d.Microseconds())
	default:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
}

func (b *bench) cleanup() {
	if b.home == "" {
		return
	}
	if b.bin != "" {
		if out, err := b.banger("vm", "ls", "-q"); err == nil {
			for _, n := range strings.Fields(out) {
				b.banger("vm", "delete", "--force", n)
			}
		}
		b.banger("daemon", "stop")
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(cmd, []byte(b.home)) {
			if pid, _ := strconv.Atoi(e.Name()); pid > 0 && pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	os.RemoveAll(b.home)
}

// testImage returns the shared test image's directory, building it when
// missing (as the tests do).
func testImage() (string, error) {
	return imagetest.Ensure(context.Background(), func(format string, a ...any) { fmt.Fprintf(os.Stderr, format+"\n", a...) })
}
