// Package fcfake is a fake Firecracker API server for contract tests of
// banger's Firecracker backend on hosts without Firecracker or KVM.
//
// It serves Firecracker's HTTP API on a unix socket and answers the way
// Firecracker v1.16.1 does, as far as banger's backend can tell:
//   - every request is validated against the v1.16.1 OpenAPI spec embedded
//     from spec/ (unknown paths and methods, unknown fields — Firecracker's
//     deserializer denies them —, missing required fields, wrong types,
//     enum values, minimums), with a 400 and {"fault_message": "..."};
//   - calls the spec marks "Pre-boot only" are refused after InstanceStart
//     or a snapshot load, "Post-boot only" ones before (plus the calls
//     whose phase the spec does not state: PUT /serial pre-boot, PATCH /vm
//     post-boot), with Firecracker's messages;
//   - InstanceStart needs a boot source and a machine config whose kernel
//     exists; drive, initrd and kernel paths must exist; one root drive
//     only; the path id must equal the body id; a tap must exist (Options.
//     TapExists); the vsock uds_path must not exist and is bound at PUT
//     /vsock, as Firecracker binds it; a snapshot load is only allowed in a
//     fresh process (nothing but the logger and metrics configured), needs
//     its files, opens the snapshot's drive paths, and applies
//     network_overrides and vsock_override; snapshot create only while
//     paused; PATCH /drives needs an existing drive and file.
//   - it records every request (Calls) and, when Options.Guest is set,
//     plays the guest behind the hybrid vsock: "CONNECT <port>\n" is
//     answered "OK <n>\n" when the guest listens on the port, else the
//     connection is closed (as Firecracker does).
//
// What it does not model: guest memory, devices, rate limiters, balloon,
// MMDS contents, metrics, the jailer, and the exact wording of every
// Firecracker error (the shape — status 400 and fault_message — and the
// cause are what tests may rely on). Snapshots it writes are its own JSON,
// not Firecracker's format.
package fcfake

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options configures a fake.
type Options struct {
	ID string // instance id (--id); default "anonymous-instance"
	// TapExists reports whether a host tap exists (default: /sys/class/net/NAME).
	TapExists func(name string) bool
	// Guest, when set, plays the guest's vsock listeners: it returns nil
	// for a port nothing listens on, else the function that owns each
	// accepted connection (called after the ack).
	Guest func(port uint32) func(conn net.Conn)
	// Log receives Firecracker-like log lines (default: discard).
	Log io.Writer
	// Console receives what the guest writes on its serial console (the
	// fake's guest writes one line when it starts; default: discard).
	Console io.Writer
	// OnCall is called after each request is answered (the helper process
	// appends calls to a file).
	OnCall func(Call)
}

// Call is one recorded request and its answer.
type Call struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
	Status int             `json:"status"`
	Fault  string          `json:"fault,omitempty"`
}

// String is "PUT /drives/root 204".
func (c Call) String() string { return fmt.Sprintf("%s %s %d", c.Method, c.Path, c.Status) }

// State is the instance state as GET / reports it.
const (
	NotStarted = "Not started"
	Running    = "Running"
	Paused     = "Paused"
)

type drive struct {
	ID       string `json:"drive_id"`
	Path     string `json:"path_on_host"`
	Root     bool   `json:"is_root_device"`
	ReadOnly bool   `json:"is_read_only"`
	Cache    string `json:"cache_type,omitempty"`
	file     *os.File
}

type nic struct {
	ID  string `json:"iface_id"`
	Tap string `json:"host_dev_name"`
	MAC string `json:"guest_mac,omitempty"`
}

type machine struct {
	VCPUs  int  `json:"vcpu_count"`
	MemMiB int  `json:"mem_size_mib"`
	SMT    bool `json:"smt"`
}

type bootSource struct {
	Kernel string `json:"kernel_image_path"`
	Initrd string `json:"initrd_path,omitempty"`
	Args   string `json:"boot_args,omitempty"`
}

type vsock struct {
	CID  int    `json:"guest_cid"`
	Path string `json:"uds_path"`
}

// vmState is the fake's snapshot format.
type vmState struct {
	Fake    string     `json:"fake"`
	Machine machine    `json:"machine"`
	Boot    bootSource `json:"boot"`
	Drives  []drive    `json:"drives"`
	NICs    []nic      `json:"nics"`
	Vsock   *vsock     `json:"vsock,omitempty"`
}

// Server is one fake Firecracker process's API.
type Server struct {
	spec *Spec
	opts Options
	srv  *http.Server

	mu         sync.Mutex
	calls      []Call
	state      string
	configured map[string]bool // boot-specific resources set pre-boot
	machine    *machine
	boot       *bootSource
	drives     map[string]*drive
	driveOrder []string
	nics       map[string]*nic
	nicOrder   []string
	vsock      *vsock
	vsockL     net.Listener
	serialPath string
	exited     chan struct{}
	exitOnce   sync.Once
}

// New returns a fake with the embedded spec.
func New(opts Options) (*Server, error) {
	spec, err := LoadSpec()
	if err != nil {
		return nil, err
	}
	if opts.ID == "" {
		opts.ID = "anonymous-instance"
	}
	if opts.TapExists == nil {
		opts.TapExists = func(name string) bool {
			_, err := os.Stat(filepath.Join("/sys/class/net", name))
			return err == nil
		}
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.Console == nil {
		opts.Console = io.Discard
	}
	s := &Server{
		spec: spec, opts: opts, state: NotStarted,
		configured: map[string]bool{}, drives: map[string]*drive{}, nics: map[string]*nic{},
		exited: make(chan struct{}),
	}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	return s, nil
}

// Listen binds the API socket at path (which must not exist, as for
// Firecracker) and serves it until Close.
func (s *Server) Listen(path string) error {
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("fcfake: bind api socket: %w", err)
	}
	s.logf("Running Firecracker v%s", SpecVersion)
	go func() { _ = s.srv.Serve(l) }()
	return nil
}

// Close stops serving and releases the vsock socket.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.vsockL != nil {
		s.vsockL.Close()
	}
	for _, d := range s.drives {
		if d.file != nil {
			d.file.Close()
		}
	}
	s.mu.Unlock()
	return s.srv.Close()
}

// Exited is closed when the guest powered off (Exit).
func (s *Server) Exited() <-chan struct{} { return s.exited }

// Exit makes the fake behave as Firecracker does when the guest powers off
// or reboots: it logs and closes Exited (the helper process then exits 0).
func (s *Server) Exit() {
	s.exitOnce.Do(func() {
		s.logf("Vmm is stopping.")
		s.logf("Firecracker exiting successfully. exit_code=0")
		close(s.exited)
	})
}

// Calls returns the recorded requests.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// State is the instance state.
func (s *Server) State() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

func (s *Server) logf(format string, a ...any) {
	fmt.Fprintf(s.opts.Log, "%s [%s:main] %s\n", time.Now().UTC().Format("2006-01-02T15:04:05.000000000"), s.opts.ID, fmt.Sprintf(format, a...))
}

// fault is a 400 answer.
type fault struct {
	status int
	msg    string
}

func (f *fault) Error() string { return f.msg }

func bad(format string, a ...any) error { return &fault{400, fmt.Sprintf(format, a...)} }

const maxBody = 1 << 20

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, maxBody))
	out, err := s.handle(r.Method, r.URL.Path, body)
	c := Call{Method: r.Method, Path: r.URL.Path, Status: http.StatusNoContent}
	if len(body) > 0 && json.Valid(body) {
		c.Body = json.RawMessage(body)
	}
	var f *fault
	if err != nil {
		if !errors.As(err, &f) {
			f = &fault{500, err.Error()}
		}
		c.Status, c.Fault = f.status, f.msg
	} else if out != nil {
		c.Status = http.StatusOK
	}
	// Recorded before the answer is sent: whoever saw the answer finds
	// the call in Calls (and in OnCall's file).
	s.mu.Lock()
	s.calls = append(s.calls, c)
	s.mu.Unlock()
	if s.opts.OnCall != nil {
		s.opts.OnCall(c)
	}
	switch {
	case f != nil:
		s.logf("The API server received a bad request: %s %s: %s", r.Method, r.URL.Path, f.msg)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.status)
		_ = json.NewEncoder(w).Encode(map[string]string{"fault_message": f.msg})
	case out != nil:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_ = json.NewEncoder(w).Encode(out)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

func (s *Server) handle(method, path string, body []byte) (any, error) {
	tmpl, params, ok := s.spec.Route(path)
	if !ok {
		return nil, bad("Invalid request method and/or path: %s %s.", method, path)
	}
	if _, ok := s.spec.Paths[tmpl][strings.ToLower(method)]; !ok {
		return nil, bad("Invalid request method and/or path: %s %s.", method, path)
	}
	if sc := s.spec.BodySchema(method, tmpl); sc != nil {
		if len(body) == 0 {
			return nil, bad("Empty request.")
		}
		if err := s.spec.Validate(sc, body); err != nil {
			return nil, &fault{400, err.Error()}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.spec.PhaseOf(method, tmpl) {
	case PreBoot:
		if s.state != NotStarted {
			return nil, bad("The requested operation is not supported after starting the microVM.")
		}
	case PostBoot:
		if s.state == NotStarted {
			return nil, bad("The requested operation is not supported before starting the microVM.")
		}
	}
	key := method + " " + tmpl
	switch key {
	case "GET /":
		return map[string]string{"app_name": "Firecracker", "id": s.opts.ID, "state": s.state, "vmm_version": SpecVersion}, nil
	case "GET /version":
		return map[string]string{"firecracker_version": SpecVersion}, nil
	case "GET /vm/config":
		return s.fullConfig(), nil
	case "GET /machine-config":
		if s.machine == nil {
			return machine{VCPUs: 1, MemMiB: 128}, nil
		}
		return s.machine, nil
	case "PUT /logger", "PUT /metrics":
		return nil, nil
	case "PUT /machine-config":
		var m machine
		_ = json.Unmarshal(body, &m)
		if m.VCPUs < 1 || m.VCPUs > 32 {
			return nil, bad("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
		}
		if m.MemMiB < 1 {
			return nil, bad("The memory size (MiB) is invalid.")
		}
		s.machine = &m
		s.configured["machine-config"] = true
		return nil, nil
	case "PUT /serial":
		var v struct {
			Path string `json:"serial_out_path"`
		}
		_ = json.Unmarshal(body, &v)
		if v.Path != "" {
			if err := checkParent(v.Path); err != nil {
				return nil, bad("Could not open the serial output file: %v", err)
			}
		}
		s.serialPath = v.Path
		s.configured["serial"] = true
		return nil, nil
	case "PUT /boot-source":
		var b bootSource
		_ = json.Unmarshal(body, &b)
		if _, err := os.Stat(b.Kernel); err != nil {
			return nil, bad("The kernel file cannot be opened: %v", osErr(err))
		}
		if b.Initrd != "" {
			if _, err := os.Stat(b.Initrd); err != nil {
				return nil, bad("The initrd file cannot be opened due to invalid path or invalid permissions. %v", osErr(err))
			}
		}
		s.boot = &b
		s.configured["boot-source"] = true
		return nil, nil
	case "PUT /drives/{drive_id}":
		var d drive
		_ = json.Unmarshal(body, &d)
		if d.ID != params["drive_id"] {
			return nil, bad("The id from the path [%s] does not match the id from the body [%s]!", params["drive_id"], d.ID)
		}
		if d.Path == "" {
			return nil, bad("Unable to create the block device: path_on_host is required for a virtio block device")
		}
		if d.Root {
			for _, o := range s.drives {
				if o.Root && o.ID != d.ID {
					return nil, bad("A root block device already exists!")
				}
			}
		}
		f, err := openDrive(d.Path, d.ReadOnly)
		if err != nil {
			return nil, bad("Unable to create the block device: BackingFile(%v, %q)", osErr(err), d.Path)
		}
		if old := s.drives[d.ID]; old != nil && old.file != nil {
			old.file.Close()
		} else {
			s.driveOrder = append(s.driveOrder, d.ID)
		}
		d.file = f
		s.drives[d.ID] = &d
		s.configured["drives"] = true
		return nil, nil
	case "PATCH /drives/{drive_id}":
		var d struct {
			ID   string  `json:"drive_id"`
			Path *string `json:"path_on_host"`
		}
		_ = json.Unmarshal(body, &d)
		if d.ID != params["drive_id"] {
			return nil, bad("The id from the path [%s] does not match the id from the body [%s]!", params["drive_id"], d.ID)
		}
		old := s.drives[d.ID]
		if old == nil {
			return nil, bad("Invalid block device ID!")
		}
		if d.Path != nil {
			f, err := openDrive(*d.Path, old.ReadOnly)
			if err != nil {
				return nil, bad("Unable to patch the block device: BackingFile(%v, %q)", osErr(err), *d.Path)
			}
			if old.file != nil {
				old.file.Close()
			}
			old.file, old.Path = f, *d.Path
		}
		return nil, nil
	case "PUT /network-interfaces/{iface_id}":
		var n nic
		_ = json.Unmarshal(body, &n)
		if n.ID != params["iface_id"] {
			return nil, bad("The id from the path [%s] does not match the id from the body [%s]!", params["iface_id"], n.ID)
		}
		if !s.opts.TapExists(n.Tap) {
			return nil, bad("Could not create the network device: Open tap device failed: Error while creating ifreq structure: Invalid argument (os error 22). Invalid TUN/TAP Backend provided by %s. Check our documentation on setting up the network devices.", n.Tap)
		}
		if n.MAC != "" {
			if _, err := net.ParseMAC(n.MAC); err != nil {
				return nil, bad("An error occurred when deserializing the json body of a request: invalid MAC address %q.", n.MAC)
			}
		}
		for _, o := range s.nics {
			if o.ID != n.ID && o.Tap == n.Tap {
				return nil, bad("Could not create the network device: The host device name %s is already in use.", n.Tap)
			}
		}
		if s.nics[n.ID] == nil {
			s.nicOrder = append(s.nicOrder, n.ID)
		}
		s.nics[n.ID] = &n
		s.configured["network-interfaces"] = true
		return nil, nil
	case "PUT /vsock":
		var v vsock
		_ = json.Unmarshal(body, &v)
		if err := s.bindVsock(v.Path); err != nil {
			return nil, bad("Cannot create vsock device: %v", err)
		}
		s.vsock = &v
		s.configured["vsock"] = true
		return nil, nil
	case "PUT /actions":
		var a struct {
			Type string `json:"action_type"`
		}
		_ = json.Unmarshal(body, &a)
		switch a.Type {
		case "InstanceStart":
			if s.state != NotStarted {
				return nil, bad("The requested operation is not supported after starting the microVM.")
			}
			if s.boot == nil {
				return nil, bad("Cannot start microvm without kernel configuration.")
			}
			if s.machine == nil {
				s.machine = &machine{VCPUs: 1, MemMiB: 128}
			}
			s.state = Running
			s.logf("Successfully started microvm")
			fmt.Fprintf(s.opts.Console, "fcfake guest: booted %s (%s)\n", s.boot.Kernel, s.boot.Args)
			return nil, nil
		case "SendCtrlAltDel":
			if s.state == NotStarted {
				return nil, bad("The requested operation is not supported before starting the microVM.")
			}
			return nil, nil
		case "FlushMetrics":
			return nil, nil
		}
	case "PATCH /vm":
		var v struct {
			State string `json:"state"`
		}
		_ = json.Unmarshal(body, &v)
		if v.State == "Paused" {
			s.state = Paused
			s.logf("Paused microVM")
		} else {
			s.state = Running
			s.logf("Resumed microVM")
		}
		return nil, nil
	case "PUT /snapshot/create":
		var p struct {
			Type    string `json:"snapshot_type"`
			State   string `json:"snapshot_path"`
			MemFile string `json:"mem_file_path"`
		}
		_ = json.Unmarshal(body, &p)
		if s.state != Paused {
			return nil, bad("Create snapshot error: Cannot save the microVM state: the microVM is not paused.")
		}
		if p.Type == "Diff" {
			return nil, bad("Create snapshot error: Diff snapshots are not enabled (track_dirty_pages).")
		}
		if err := s.writeSnapshot(p.State, p.MemFile); err != nil {
			return nil, bad("Create snapshot error: %v", err)
		}
		return nil, nil
	case "PUT /snapshot/load":
		return nil, s.loadSnapshot(body)
	}
	// A call the spec has and banger's backend never makes: accept it
	// pre-validated (its phase was checked) without modelling it.
	return nil, nil
}

func osErr(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Sprintf("%v", err)
}

func checkParent(p string) error {
	st, err := os.Stat(filepath.Dir(p))
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", filepath.Dir(p))
	}
	return nil
}

func openDrive(path string, ro bool) (*os.File, error) {
	flag := os.O_RDWR
	if ro {
		flag = os.O_RDONLY
	}
	return os.OpenFile(path, flag, 0)
}

// bindVsock binds the host side of the hybrid vsock at path (which must
// not exist: Firecracker fails with "Address in use") and serves it.
func (s *Server) bindVsock(path string) error {
	if s.vsockL != nil {
		s.vsockL.Close()
		s.vsockL = nil
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	s.vsockL = l
	go s.serveVsock(l)
	return nil
}

func (s *Server) serveVsock(l net.Listener) {
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		go s.vsockConn(conn)
	}
}

var nextHostPort atomic.Uint32

// vsockConn does Firecracker's host-initiated connection protocol.
func (s *Server) vsockConn(conn net.Conn) {
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReaderSize(io.LimitReader(conn, 64), 64)
	line, err := r.ReadString('\n')
	if err != nil {
		conn.Close()
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	f := strings.Fields(line)
	if len(f) != 2 || f[0] != "CONNECT" {
		conn.Close()
		return
	}
	port, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil || s.State() != Running || s.opts.Guest == nil {
		conn.Close()
		return
	}
	hp := 1<<30 + nextHostPort.Add(1) // Firecracker's host-side ports start at 2^30
	// Firecracker acks once the guest accepted the connection.
	serve := s.opts.Guest(uint32(port))
	if serve == nil {
		conn.Close()
		return
	}
	if _, err := fmt.Fprintf(conn, "OK %d\n", hp); err != nil {
		conn.Close()
		return
	}
	serve(conn)
}

func (s *Server) fullConfig() any {
	var drives []drive
	for _, id := range s.driveOrder {
		drives = append(drives, *s.drives[id])
	}
	var nics []nic
	for _, id := range s.nicOrder {
		nics = append(nics, *s.nics[id])
	}
	cfg := map[string]any{"drives": drives, "network-interfaces": nics}
	if s.machine != nil {
		cfg["machine-config"] = s.machine
	}
	if s.boot != nil {
		cfg["boot-source"] = s.boot
	}
	if s.vsock != nil {
		cfg["vsock"] = s.vsock
	}
	return cfg
}

func (s *Server) writeSnapshot(statePath, memPath string) error {
	st := vmState{Fake: "fcfake " + SpecVersion, Boot: *s.boot, Vsock: s.vsock}
	if s.machine != nil {
		st.Machine = *s.machine
	}
	for _, id := range s.driveOrder {
		st.Drives = append(st.Drives, *s.drives[id])
	}
	for _, id := range s.nicOrder {
		st.NICs = append(st.NICs, *s.nics[id])
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := os.WriteFile(statePath, b, 0o644); err != nil {
		return err
	}
	f, err := os.Create(memPath)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(int64(st.Machine.MemMiB) << 20) // sparse: the fake has no guest memory
}

func (s *Server) loadSnapshot(body []byte) error {
	for k := range s.configured {
		if k != "logger" && k != "metrics" {
			return bad("Loading a microVM snapshot not allowed after configuring boot-specific resources.")
		}
	}
	var p struct {
		State      string `json:"snapshot_path"`
		MemFile    string `json:"mem_file_path"`
		MemBackend *struct {
			Type string `json:"backend_type"`
			Path string `json:"backend_path"`
		} `json:"mem_backend"`
		Resume      bool `json:"resume_vm"`
		NetOverride []struct {
			ID  string `json:"iface_id"`
			Tap string `json:"host_dev_name"`
		} `json:"network_overrides"`
		Vsock *struct {
			Path string `json:"uds_path"`
		} `json:"vsock_override"`
	}
	_ = json.Unmarshal(body, &p)
	mem := p.MemFile
	switch {
	case p.MemFile != "" && p.MemBackend != nil:
		return bad("Load snapshot error: only one of mem_file_path and mem_backend may be given.")
	case p.MemBackend != nil:
		if p.MemBackend.Type != "File" {
			return bad("Load snapshot error: the fake serves File memory backends only")
		}
		mem = p.MemBackend.Path
	case mem == "":
		return bad("Load snapshot error: missing field: either `mem_backend` or `mem_file_path` is required.")
	}
	raw, err := os.ReadFile(p.State)
	if err != nil {
		return bad("Load snapshot error: Failed to restore from snapshot: Failed to open snapshot file: %v", osErr(err))
	}
	if _, err := os.Stat(mem); err != nil {
		return bad("Load snapshot error: Failed to restore from snapshot: Cannot open the memory file: %v", osErr(err))
	}
	var st vmState
	if err := json.Unmarshal(raw, &st); err != nil || !strings.HasPrefix(st.Fake, "fcfake ") {
		return bad("Load snapshot error: Failed to restore from snapshot: Invalid snapshot data")
	}
	nics := map[string]*nic{}
	var order []string
	for i := range st.NICs {
		n := st.NICs[i]
		nics[n.ID] = &n
		order = append(order, n.ID)
	}
	for _, o := range p.NetOverride {
		n := nics[o.ID]
		if n == nil {
			return bad("Load snapshot error: Failed to restore from snapshot: Invalid network override: no interface %s in the snapshot", o.ID)
		}
		n.Tap = o.Tap
	}
	for _, id := range order {
		if !s.opts.TapExists(nics[id].Tap) {
			return bad("Load snapshot error: Failed to restore from snapshot: Failed to build microVM from snapshot: Open tap device failed for %s", nics[id].Tap)
		}
	}
	drives := map[string]*drive{}
	var dorder []string
	for i := range st.Drives {
		d := st.Drives[i]
		f, err := openDrive(d.Path, d.ReadOnly)
		if err != nil {
			for _, o := range drives {
				o.file.Close()
			}
			return bad("Load snapshot error: Failed to restore from snapshot: Failed to build microVM from snapshot: Block device error: BackingFile(%v, %q)", osErr(err), d.Path)
		}
		d.file = f
		drives[d.ID] = &d
		dorder = append(dorder, d.ID)
	}
	if st.Vsock != nil {
		v := *st.Vsock
		if p.Vsock != nil {
			v.Path = p.Vsock.Path
		}
		if err := s.bindVsock(v.Path); err != nil {
			for _, o := range drives {
				o.file.Close()
			}
			return bad("Load snapshot error: Failed to restore from snapshot: Failed to build microVM from snapshot: Cannot create vsock device: %v", err)
		}
		s.vsock = &v
	}
	m := st.Machine
	b := st.Boot
	s.machine, s.boot, s.drives, s.driveOrder, s.nics, s.nicOrder = &m, &b, drives, dorder, nics, order
	s.state = Paused
	if p.Resume {
		s.state = Running
	}
	s.logf("Loaded snapshot %s", p.State)
	return nil
}

// Sequence is the calls as "METHOD /path STATUS" strings.
func Sequence(calls []Call) []string {
	out := make([]string, len(calls))
	for i, c := range calls {
		out[i] = c.String()
	}
	return out
}
