// Command dnsflood measures what a DNS flood costs the real bangerd
// (issue 16): the daemon runs in a network namespace of its own, with an
// /etc/resolv.conf of its own (a private mount namespace) naming a
// resolver in that namespace that never answers, and is sent, from
// 127.0.0.1, a burst of UDP queries for names it must forward, then a
// burst of TCP connections each asking one. It prints the daemon's open
// file descriptors, threads and RSS (from /proc) idle and at their peak
// under each burst, and how many UDP source ports the upstream saw. The
// daemon's goroutines are not visible from outside; TestDNSFloodBounded
// (internal/network) counts those in process.
//
// No query leaves the namespace, and nothing is left behind.
//
//	go run ./bench/dnsflood [-bin DIR] [-udp 5000] [-tcp 200]
//
// -bin is the directory of banger and bangerd ($BANGER_TEST_BIN, else
// bin/): run it once with an older build for a before/after.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/client"
	"github.com/banger-sh/banger/internal/system"
)

func main() {
	bin := flag.String("bin", "", "directory of bangerd (default $BANGER_TEST_BIN, else bin)")
	nUDP := flag.Int("udp", 5000, "UDP queries in the burst")
	nTCP := flag.Int("tcp", 200, "TCP connections in the burst")
	flag.Parse()
	if *bin == "" {
		*bin = os.Getenv("BANGER_TEST_BIN")
	}
	if *bin == "" {
		*bin = "bin"
	}
	if err := run(filepath.Join(*bin, "bangerd"), *nUDP, *nTCP); err != nil {
		fmt.Fprintln(os.Stderr, "dnsflood:", err)
		os.Exit(1)
	}
}

// inNS runs f on a thread of its own in ns (never unlocked, so Go
// discards it when f's goroutine ends: f may change its mount namespace).
func inNS(ns netns.NsHandle, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

type sample struct{ fds, threads, rssKiB int }

func measure(pid int) (sample, error) {
	var s sample
	es, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, err
	}
	s.fds = len(es)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ":")
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.Atoi(f[0])
		switch k {
		case "Threads":
			s.threads = n
		case "VmRSS":
			s.rssKiB = n
		}
	}
	return s, nil
}

// peak samples pid every 2 ms while f runs, and for settle after it.
func peak(pid int, settle time.Duration, f func() error) (sample, error) {
	var mu sync.Mutex
	var p sample
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if s, err := measure(pid); err == nil {
				mu.Lock()
				p.fds, p.threads, p.rssKiB = max(p.fds, s.fds), max(p.threads, s.threads), max(p.rssKiB, s.rssKiB)
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	err := f()
	time.Sleep(settle)
	close(stop)
	<-done
	return p, err
}

func run(bangerd string, nUDP, nTCP int) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (network and mount namespaces)")
	}
	if _, err := os.Stat(bangerd); err != nil {
		return err
	}
	home, err := os.MkdirTemp("", "bgflood")
	if err != nil {
		return err
	}
	defer os.RemoveAll(home)
	// The namespace: lo up, a resolver at 127.0.0.53 that never answers.
	b := make([]byte, 4)
	rand.Read(b)
	nsName := "bgflood-" + hex.EncodeToString(b)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	ns, err := netns.NewNamed(nsName)
	if serr := netns.Set(orig); serr != nil {
		return fmt.Errorf("restore netns: %w", serr)
	}
	orig.Close()
	runtime.UnlockOSThread()
	if err != nil {
		return err
	}
	defer netns.DeleteNamed(nsName)
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	lo, _ := nh.LinkByName("lo")
	nh.LinkSetUp(lo)
	nh.Close()
	var ports sync.Map
	var upQueries atomic.Int64
	var upConn *net.UDPConn
	var upTCP net.Listener
	if err := inNS(ns, func() error {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 53), Port: 53})
		if err != nil {
			return err
		}
		upConn = c
		upTCP, err = net.Listen("tcp", "127.0.0.53:53")
		return err
	}); err != nil {
		return err
	}
	defer upConn.Close()
	defer upTCP.Close()
	go func() {
		buf := make([]byte, 4096)
		for {
			_, from, err := upConn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			upQueries.Add(1)
			ports.Store(from.Port, true)
		}
	}()
	go func() {
		for {
			c, err := upTCP.Accept()
			if err != nil {
				return
			}
			go func() { time.Sleep(5 * time.Second); c.Close() }()
		}
	}()
	resolv := filepath.Join(home, "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver 127.0.0.53\n"), 0o644)
	os.MkdirAll(filepath.Join(home, "config"), 0o755)
	os.WriteFile(filepath.Join(home, "config", "config.toml"), []byte("[vm]\nspares = 0\n"), 0o644)

	// bangerd, in the namespace, with that resolv.conf.
	out, err := os.Create(filepath.Join(home, "bangerd.out"))
	if err != nil {
		return err
	}
	defer out.Close()
	var p *system.Process
	if err := inNS(ns, func() error {
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			return err
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return err
		}
		if err := unix.Mount(resolv, "/etc/resolv.conf", "", unix.MS_BIND, ""); err != nil {
			return err
		}
		var err error
		p, err = system.Start(system.Opts{Env: []string{"BANGER_HOME=" + home}, Stdout: out, Stderr: out}, bangerd)
		return err
	}); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { p.Wait(); close(exited) }()
	defer func() {
		p.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			p.Signal(syscall.SIGKILL)
			<-exited
		}
	}()
	cl := client.New(filepath.Join(home, "run", "bangerd.sock"))
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := cl.Health(context.Background()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(out.Name())
			return fmt.Errorf("bangerd did not start: %s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	dnsAddr := "127.0.0.1:42069"
	if err := inNS(ns, func() error {
		r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(new(dns.Msg).SetQuestion("nope.vm.", dns.TypeA), dnsAddr)
		if err == nil && r.Rcode != dns.RcodeNameError {
			err = fmt.Errorf("nope.vm: %v", r)
		}
		return err
	}); err != nil {
		return fmt.Errorf("bangerd's DNS: %w", err)
	}
	pid := p.Pid()
	time.Sleep(time.Second)
	idle, err := measure(pid)
	if err != nil {
		return err
	}

	// UDP: one socket, nUDP names to forward, answers read as they come.
	var answers atomic.Int64
	udp, err := peak(pid, 2500*time.Millisecond, func() error {
		return inNS(ns, func() error {
			pc, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				return err
			}
			go func() {
				buf := make([]byte, 4096)
				for {
					pc.SetReadDeadline(time.Now().Add(5 * time.Second))
					if _, _, err := pc.ReadFrom(buf); err != nil {
						return
					}
					answers.Add(1)
				}
			}()
			dst, _ := net.ResolveUDPAddr("udp", dnsAddr)
			for i := 0; i < nUDP; i++ {
				m, _ := new(dns.Msg).SetQuestion(fmt.Sprintf("q%d.flood.example.", i), dns.TypeA).Pack()
				pc.WriteTo(m, dst)
				if i%100 == 99 {
					time.Sleep(time.Millisecond)
				}
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	udpPorts := 0
	ports.Range(func(any, any) bool { udpPorts++; return true })
	udpUp := upQueries.Load()
	time.Sleep(3 * time.Second) // the forwards time out
	// TCP: nTCP connections, each asking one name to forward.
	var conns []net.Conn
	tcp, err := peak(pid, 1500*time.Millisecond, func() error {
		return inNS(ns, func() error {
			for i := 0; i < nTCP; i++ {
				c, err := net.DialTimeout("tcp", dnsAddr, 2*time.Second)
				if err != nil {
					continue
				}
				conns = append(conns, c)
				(&dns.Conn{Conn: c}).WriteMsg(new(dns.Msg).SetQuestion(fmt.Sprintf("t%d.flood.example.", i), dns.TypeA))
			}
			return nil
		})
	})
	for _, c := range conns {
		c.Close()
	}
	if err != nil {
		return err
	}
	fmt.Printf("bangerd %s under a DNS flood from 127.0.0.1 (upstream never answers)\n\n", bangerd)
	fmt.Printf("%-34s %8s %8s %10s\n", "", "fds", "threads", "RSS MiB")
	row := func(name string, s sample) {
		fmt.Printf("%-34s %8d %8d %10.1f\n", name, s.fds, s.threads, float64(s.rssKiB)/1024)
	}
	row("idle", idle)
	row(fmt.Sprintf("peak, %d UDP queries", nUDP), udp)
	row(fmt.Sprintf("peak, %d TCP connections", nTCP), tcp)
	fmt.Printf("\nUDP: %d answers received, %d queries reached the upstream from %d source ports\n", answers.Load(), udpUp, udpPorts)
	return nil
}
