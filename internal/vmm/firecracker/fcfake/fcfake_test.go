package fcfake

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSpecIsFirecrackers: the embedded file is Firecracker v1.16.1's spec,
// and the definitions banger's backend sends have exactly the fields
// written here (taken by hand from Firecracker's docs): if the spec file
// is swapped or edited, this fails.
func TestSpecIsFirecrackers(t *testing.T) {
	if !bytes.Contains(specYAML, []byte("\n  version: 1.16.1\n")) || !bytes.HasPrefix(specYAML, []byte(`swagger: "2.0"`)) {
		t.Fatal("embedded spec is not Firecracker's v1.16.1 swagger file")
	}
	s, err := LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"BootSource":           {"boot_args", "initrd_path", "kernel_image_path"},
		"Drive":                {"cache_type", "drive_id", "io_engine", "is_read_only", "is_root_device", "partuuid", "path_on_host", "rate_limiter", "socket"},
		"PartialDrive":         {"drive_id", "path_on_host", "rate_limiter"},
		"MachineConfiguration": {"cpu_template", "huge_pages", "mem_size_mib", "smt", "track_dirty_pages", "vcpu_count"},
		"NetworkInterface":     {"guest_mac", "host_dev_name", "iface_id", "mtu", "rx_rate_limiter", "tx_rate_limiter"},
		"Vsock":                {"guest_cid", "uds_path", "vsock_id"},
		"InstanceActionInfo":   {"action_type"},
		"Vm":                   {"state"},
		"SerialDevice":         {"rate_limiter", "serial_out_path"},
		"SnapshotCreateParams": {"mem_file_path", "snapshot_path", "snapshot_type"},
		"SnapshotLoadParams":   {"clock_realtime", "enable_diff_snapshots", "mem_backend", "mem_file_path", "network_overrides", "resume_vm", "snapshot_path", "track_dirty_pages", "vsock_override"},
		"NetworkOverride":      {"host_dev_name", "iface_id"},
		"VsockOverride":        {"uds_path"},
		"MemoryBackend":        {"backend_path", "backend_type"},
	}
	for def, fields := range want {
		if got := s.Fields(def); !slices.Equal(got, fields) {
			t.Errorf("%s: spec has %v, want %v", def, got, fields)
		}
	}
	phases := map[string]Phase{
		"PUT /boot-source": PreBoot, "PUT /drives/{drive_id}": PreBoot, "PATCH /drives/{drive_id}": PostBoot,
		"PUT /machine-config": PreBoot, "PUT /network-interfaces/{iface_id}": PreBoot, "PUT /vsock": PreBoot,
		"PUT /snapshot/create": PostBoot, "PUT /snapshot/load": PreBoot, "PATCH /vm": PostBoot,
		"PUT /serial": PreBoot, "PUT /actions": Any, "GET /": Any,
	}
	for k, want := range phases {
		m, p, _ := strings.Cut(k, " ")
		if got := s.PhaseOf(m, p); got != want {
			t.Errorf("%s: phase %d, want %d", k, got, want)
		}
	}
}

type fake struct {
	t    *testing.T
	s    *Server
	sock string
	dir  string
	hc   *http.Client
}

func newFake(t *testing.T, opts Options) *fake {
	t.Helper()
	dir, err := os.MkdirTemp("", "fcf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if opts.TapExists == nil {
		opts.TapExists = func(n string) bool { return n == "tap0" || n == "tap1" }
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "api.sock")
	if err := s.Listen(sock); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &fake{t: t, s: s, sock: sock, dir: dir, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}}
}

// do sends a request and returns the status and fault_message.
func (f *fake) do(method, path, body string) (int, string) {
	f.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, "http://localhost"+path, rd)
	resp, err := f.hc.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 204 && len(b) != 0 {
		f.t.Errorf("%s %s: 204 with a body %q", method, path, b)
	}
	var fm struct {
		Fault string `json:"fault_message"`
	}
	if resp.StatusCode >= 400 {
		if err := json.Unmarshal(b, &fm); err != nil || fm.Fault == "" {
			f.t.Errorf("%s %s: error body %q is not {fault_message}", method, path, b)
		}
	}
	return resp.StatusCode, fm.Fault
}

func (f *fake) ok(method, path, body string) {
	f.t.Helper()
	if st, msg := f.do(method, path, body); st/100 != 2 {
		f.t.Fatalf("%s %s %s: %d %s", method, path, body, st, msg)
	}
}

func (f *fake) refused(method, path, body, wantMsg string) {
	f.t.Helper()
	st, msg := f.do(method, path, body)
	if st != 400 || !strings.Contains(msg, wantMsg) {
		f.t.Errorf("%s %s %s: %d %q, want 400 with %q", method, path, body, st, msg, wantMsg)
	}
}

func (f *fake) file(name string, size int64) string {
	p := filepath.Join(f.dir, name)
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		f.t.Fatal(err)
	}
	return p
}

// TestRejectsWhatFirecrackerRejects: each request below is one the real
// Firecracker answers 400; the fake must too, and its state must not
// change.
func TestRejectsWhatFirecrackerRejects(t *testing.T) {
	f := newFake(t, Options{})
	kernel, root := f.file("vmlinux", 4096), f.file("root.ext4", 1<<20)

	f.refused("PUT", "/nope", `{}`, "Invalid request method and/or path")
	f.refused("DELETE", "/drives/root", "", "Invalid request method and/or path")
	f.refused("PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128, "ht_enabled": false}`, "unknown field `ht_enabled`")
	f.refused("PUT", "/machine-config", `{"vcpu_count": 1}`, "missing field `mem_size_mib`")
	f.refused("PUT", "/machine-config", `{"vcpu_count": "1", "mem_size_mib": 128}`, "invalid type")
	f.refused("PUT", "/machine-config", `{"vcpu_count": 1.5, "mem_size_mib": 128}`, "expected an integer")
	f.refused("PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128} x`, "deserializing")
	f.refused("PUT", "/vsock", `{"guest_cid": 2, "uds_path": "`+filepath.Join(f.dir, "v.sock")+`"}`, "out of range")
	f.refused("PUT", "/drives/root", `{"drive_id": "root", "is_root_device": true, "path_on_host": "`+root+`", "cache_type": "Fast"}`, "unknown variant `Fast`")
	f.refused("PUT", "/drives/root", `{"drive_id": "root", "is_root_device": true, "path_on_host": "`+root+`", "rate_limiter": {"bandwidth": {"size": 1}}}`, "missing field `refill_time`")
	f.refused("PUT", "/drives/root", `{"drive_id": "other", "is_root_device": true, "path_on_host": "`+root+`"}`, "does not match")
	f.refused("PUT", "/drives/root", `{"drive_id": "root", "is_root_device": true, "path_on_host": "/nonexistent/root.ext4"}`, "no such file")
	f.refused("PUT", "/boot-source", `{"kernel_image_path": "/nonexistent/vmlinux"}`, "kernel file cannot be opened")
	f.refused("PUT", "/boot-source", `{"boot_args": "console=ttyS0"}`, "missing field `kernel_image_path`")
	f.refused("PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "notatap"}`, "Open tap device failed")
	f.refused("PUT", "/actions", `{"action_type": "InstanceStart"}`, "without kernel configuration")
	f.refused("PUT", "/actions", `{"action_type": "Reboot"}`, "unknown variant")
	// Post-boot calls before boot.
	f.refused("PATCH", "/vm", `{"state": "Paused"}`, "before starting the microVM")
	f.refused("PATCH", "/drives/root", `{"drive_id": "root", "path_on_host": "`+root+`"}`, "before starting the microVM")
	f.refused("PUT", "/snapshot/create", `{"snapshot_path": "/tmp/x", "mem_file_path": "/tmp/y"}`, "before starting the microVM")
	if f.s.State() != NotStarted {
		t.Fatalf("state %s after refused calls", f.s.State())
	}

	// A good boot, then pre-boot calls are refused.
	f.ok("PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128}`)
	f.ok("PUT", "/boot-source", `{"kernel_image_path": "`+kernel+`", "boot_args": "console=ttyS0"}`)
	f.ok("PUT", "/drives/root", `{"drive_id": "root", "is_root_device": true, "is_read_only": false, "path_on_host": "`+root+`"}`)
	f.refused("PUT", "/drives/root2", `{"drive_id": "root2", "is_root_device": true, "path_on_host": "`+root+`"}`, "root block device already exists")
	f.ok("PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00:01"}`)
	f.refused("PUT", "/network-interfaces/eth1", `{"iface_id": "eth1", "host_dev_name": "tap0"}`, "already in use")
	vs := filepath.Join(f.dir, "v.sock")
	f.ok("PUT", "/vsock", `{"guest_cid": 3, "uds_path": "`+vs+`"}`)
	f.refused("PUT", "/snapshot/load", `{"snapshot_path": "/x", "mem_backend": {"backend_type": "File", "backend_path": "/y"}}`, "not allowed after configuring boot-specific resources")
	f.ok("PUT", "/actions", `{"action_type": "InstanceStart"}`)
	f.refused("PUT", "/actions", `{"action_type": "InstanceStart"}`, "after starting the microVM")
	f.refused("PUT", "/drives/disk1", `{"drive_id": "disk1", "is_root_device": false, "path_on_host": "`+root+`"}`, "after starting the microVM")
	f.refused("PUT", "/machine-config", `{"vcpu_count": 2, "mem_size_mib": 128}`, "after starting the microVM")
	f.refused("PUT", "/snapshot/create", `{"snapshot_path": "`+filepath.Join(f.dir, "st")+`", "mem_file_path": "`+filepath.Join(f.dir, "mem")+`"}`, "not paused")
	f.refused("PATCH", "/drives/disk9", `{"drive_id": "disk9", "path_on_host": "`+root+`"}`, "Invalid block device ID")
	f.ok("PATCH", "/vm", `{"state": "Paused"}`)
	f.ok("PUT", "/snapshot/create", `{"snapshot_type": "Full", "snapshot_path": "`+filepath.Join(f.dir, "st")+`", "mem_file_path": "`+filepath.Join(f.dir, "mem")+`"}`)

	calls := f.s.Calls()
	if len(calls) < 30 || calls[0].Status != 400 || calls[len(calls)-1].String() != "PUT /snapshot/create 204" {
		t.Errorf("calls not recorded in order: %v", Sequence(calls))
	}
}

// TestSnapshotLoadAndVsock: a fresh fake loads the snapshot of another
// with overrides, refuses a missing drive, and serves the hybrid vsock
// protocol (ack for a listening port, close for another).
func TestSnapshotLoadAndVsock(t *testing.T) {
	guest := func(port uint32) func(net.Conn) {
		if port != 1024 {
			return nil
		}
		return func(c net.Conn) { fmt.Fprintf(c, "hello\n"); c.Close() }
	}
	a := newFake(t, Options{Guest: guest})
	kernel, root := a.file("vmlinux", 4096), a.file("root.ext4", 1<<20)
	a.ok("PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 64}`)
	a.ok("PUT", "/boot-source", `{"kernel_image_path": "`+kernel+`"}`)
	a.ok("PUT", "/drives/root", `{"drive_id": "root", "is_root_device": true, "path_on_host": "`+root+`"}`)
	a.ok("PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0"}`)
	a.ok("PUT", "/vsock", `{"guest_cid": 3, "uds_path": "`+filepath.Join(a.dir, "v.sock")+`"}`)
	// Before boot the guest does not answer.
	if _, err := connect(filepath.Join(a.dir, "v.sock"), 1024); err == nil {
		t.Error("vsock acked before InstanceStart")
	}
	a.ok("PUT", "/actions", `{"action_type": "InstanceStart"}`)
	if line, err := connect(filepath.Join(a.dir, "v.sock"), 1024); err != nil || line != "hello" {
		t.Errorf("vsock port 1024: %q %v", line, err)
	}
	if _, err := connect(filepath.Join(a.dir, "v.sock"), 52); err == nil {
		t.Error("vsock port 52 (no listener) acked")
	}
	a.ok("PATCH", "/vm", `{"state": "Paused"}`)
	st, mem := filepath.Join(a.dir, "vmstate"), filepath.Join(a.dir, "mem")
	a.ok("PUT", "/snapshot/create", `{"snapshot_path": "`+st+`", "mem_file_path": "`+mem+`"}`)

	b := newFake(t, Options{Guest: guest})
	load := func(tap, vsock string) string {
		return `{"snapshot_path": "` + st + `", "mem_backend": {"backend_type": "File", "backend_path": "` + mem + `"}, "network_overrides": [{"iface_id": "eth0", "host_dev_name": "` + tap + `"}], "vsock_override": {"uds_path": "` + vsock + `"}}`
	}
	b.refused("PUT", "/snapshot/load", `{"snapshot_path": "`+st+`"}`, "mem_backend")
	b.refused("PUT", "/snapshot/load", `{"snapshot_path": "`+st+`", "mem_file_path": "`+mem+`", "mem_backend": {"backend_type": "File", "backend_path": "`+mem+`"}}`, "only one")
	b.refused("PUT", "/snapshot/load", load("tap0", filepath.Join(a.dir, "v.sock")), "vsock") // a's socket is bound
	b.refused("PUT", "/snapshot/load", load("nosuchtap", filepath.Join(b.dir, "v.sock")), "Open tap device failed")
	b.refused("PUT", "/snapshot/load", strings.Replace(load("tap1", filepath.Join(b.dir, "v.sock")), "eth0", "eth7", 1), "Invalid network override")
	b.ok("PUT", "/snapshot/load", load("tap1", filepath.Join(b.dir, "v.sock")))
	if b.s.State() != Paused {
		t.Fatalf("after load: %s", b.s.State())
	}
	b.refused("PUT", "/boot-source", `{"kernel_image_path": "`+kernel+`"}`, "after starting the microVM")
	clone := b.file("clone.ext4", 1<<20)
	b.ok("PATCH", "/drives/root", `{"drive_id": "root", "path_on_host": "`+clone+`"}`)
	b.ok("PATCH", "/vm", `{"state": "Resumed"}`)
	if line, err := connect(filepath.Join(b.dir, "v.sock"), 1024); err != nil || line != "hello" {
		t.Errorf("clone vsock: %q %v", line, err)
	}

	// The template's drive is gone: the load fails.
	os.Remove(root)
	c := newFake(t, Options{})
	c.refused("PUT", "/snapshot/load", load("tap1", filepath.Join(c.dir, "v.sock")), "BackingFile")
}

func connect(sock string, port int) (string, error) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintf(c, "CONNECT %d\n", port)
	r := bufio.NewReader(c)
	ack, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(ack, "OK ") {
		return "", fmt.Errorf("ack %q", ack)
	}
	line, err := r.ReadString('\n')
	return strings.TrimSpace(line), err
}
