// Package vm is the VM state machine: create, start, stop, delete and exec,
// each under the VM's own lock, with every resource a step acquires undone
// when a later step fails.
//
// A VM is a store row plus what it owns: a copy-on-write root disk and a
// console log in its state directory, a runtime directory with the VMM's
// sockets, and the VMM process (found again through vmm.Handle: pid,
// process start time, boot id, control socket). States:
//
//	creating → running ⇄ stopped, plus deleting, error and unknown.
//
// The state shown to users is derived from the world (see derive), not
// trusted from the row.
package vm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"regexp"
	"sync"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/config"
	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/network"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/progress"
	"github.com/banger-sh/banger/internal/store"
	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/warm"
)

// VM states as stored and shown.
const (
	StateCreating = "creating"
	StateRunning  = "running"
	StateStopped  = "stopped"
	StateDeleting = "deleting"
	StateError    = "error"
	StateUnknown  = "unknown"
)

// Spec is a VM's persisted machine shape (the row's spec column).
type Spec struct {
	VCPUs       int    `json:"vcpus"`
	MemoryMiB   int    `json:"memory_mib"`
	DiskBytes   int64  `json:"disk_bytes"`
	ImageName   string `json:"image_name"`
	ImageDigest string `json:"image_digest"`
	Backend     string `json:"backend"`
	Boot        string `json:"boot,omitempty"` // how it last started: cold | warm
	// Net is the egress policy: "nat", "none", "shared", or "off" (no NIC:
	// the daemon had no networking when the VM was created).
	Net string `json:"net"`
	// Forwards are host→guest TCP port forwards, "HOSTADDR:PORT:GUESTPORT".
	Forwards []string `json:"forwards,omitempty"`
	// Template is the warm template a clone was restored from (its root
	// disk is backed by the template's: the template is in use).
	Template string `json:"template,omitempty"`
	// WorkSlot: the VM has a work-disk slot without a workspace (clones
	// keep their template's device set across restarts; cold creates
	// without a workspace get one too, for workspace prepare).
	WorkSlot bool `json:"work_slot,omitempty"`
	// Workspace is the repository shipped into the VM, if any.
	Workspace *api.WorkspaceInfo `json:"workspace,omitempty"`
}

// Images is what the manager needs of the image registry.
type Images interface {
	// Resolve returns the image row and its directory, building the
	// default image first when it is missing and name is the default.
	Resolve(ctx context.Context, name string, progress Progress) (*store.Image, error)
}

// Progress receives phase updates of long operations.
type Progress = progress.Func

// Options configure a Manager.
type Options struct {
	Store   *store.Store
	Layout  paths.Layout
	Config  config.Config
	Backend vmm.Backend
	Images  Images
	Network *network.Manager // nil: VMs get no NIC
	// Templates, when set, makes warm starts possible.
	Templates *warm.Store
	// AuthorizedKeys are installed as root's authorized_keys in every
	// guest (banger's own ssh key, for vm ssh).
	AuthorizedKeys []string
	Log            *slog.Logger
	// ReadyTimeout bounds the wait for a booted guest's agent.
	ReadyTimeout time.Duration
	// Spares is how many clones are kept restored ahead of demand, for
	// the shapes used most recently (0: none; see internal/warm).
	Spares int
	// Disk makes root disks; nil: disk.Choose for the backend's root
	// formats and the VMs directory.
	Disk disk.Strategy
}

// Manager runs VMs.
type Manager struct {
	opts    Options
	store   *store.Store
	layout  paths.Layout
	backend vmm.Backend
	net     *network.Manager
	log     *slog.Logger
	disk    disk.Strategy // how root disks are made
	diskErr error         // why none can be (then creates fail with it)

	mu       sync.Mutex
	forwards map[string][]*network.PortForward // VM id → its live forwards
	locks    map[string]*sync.Mutex            // VM id → its lock
	agents   map[string]*agentConn             // VM id → connection to its agent
	watch    map[string]context.CancelFunc     // VM id → exit watcher
	shadows  map[string]*shadowJob             // VM id → its shadow repository being made

	closing  chan struct{}
	wg       sync.WaitGroup
	bgCtx    context.Context // background work; ends at Close
	bgCancel context.CancelFunc
	warm     *warm.Pool // templates and spares; nil: no warm starts
}

// New returns a manager. Call Reconcile before serving.
func New(o Options) *Manager {
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 3 * time.Minute
	}
	m := &Manager{
		opts: o, store: o.Store, layout: o.Layout, backend: o.Backend, log: o.Log, net: o.Network,
		forwards: map[string][]*network.PortForward{},
		locks:    map[string]*sync.Mutex{}, agents: map[string]*agentConn{}, watch: map[string]context.CancelFunc{},
		shadows: map[string]*shadowJob{},
		closing: make(chan struct{}),
	}
	m.bgCtx, m.bgCancel = context.WithCancel(context.Background())
	if o.Templates != nil {
		var taps warm.Taps
		if o.Network != nil {
			taps = o.Network
		}
		m.warm = warm.New(warm.Options{Store: o.Templates, Backend: o.Backend, Layout: o.Layout, Taps: taps,
			AuthorizedKeys: o.AuthorizedKeys, Spares: o.Spares, NewID: newID, Log: o.Log})
	}
	m.disk = o.Disk
	if m.disk == nil {
		m.disk, m.diskErr = disk.Choose(o.Backend.RootFormats(), o.Layout.VMsDir(), disk.RealHost())
	}
	if m.disk != nil && m.log != nil {
		m.log.Info("root disks", "strategy", m.disk.Name(), "format", m.disk.Format())
	}
	return m
}

// rootDisk is the VM's root disk: the one it has (made by whichever
// strategy was chosen then), else the one m.disk would make.
func (m *Manager) rootDisk(id string) vmm.Disk {
	stem := m.layout.VMRootStem(id)
	img, ok := disk.Existing(stem)
	if !ok {
		f := disk.FormatRaw
		if m.disk != nil {
			f = m.disk.Format()
		}
		img = disk.Image{Path: stem + disk.Ext(f), Format: f}
	}
	return vmm.Disk{Path: img.Path, Format: img.Format}
}

// makeRoot creates the VM's root disk from base with m.disk.
func (m *Manager) makeRoot(ctx context.Context, id string, base disk.Image, sizeBytes int64) (vmm.Disk, error) {
	if m.disk == nil {
		if av := m.backend.Available(ctx); !av.OK {
			// No backend (it takes no disk format): its reason is the one.
			return vmm.Disk{}, errdefs.Unavailable(fmt.Sprintf("no hypervisor backend can run here (%s): %s", m.backend.Name(), av.Reason))
		}
		return vmm.Disk{}, m.diskErr
	}
	img, err := disk.Make(ctx, m.disk, base, m.layout.VMRootStem(id), sizeBytes)
	if err != nil {
		return vmm.Disk{}, err
	}
	return vmm.Disk{Path: img.Path, Format: img.Format}, nil
}

// removeRoot removes the VM's root disk, whatever its format.
func (m *Manager) removeRoot(id string) {
	if img, ok := disk.Existing(m.layout.VMRootStem(id)); ok {
		os.Remove(img.Path)
	}
}

// Close stops watchers, closes agent connections and kills the spare
// clones. VMs keep running.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	close(m.closing)
	m.mu.Unlock()
	m.bgCancel()
	if m.warm != nil {
		m.warm.Close()
	}
	m.mu.Lock()
	for _, c := range m.watch {
		c()
	}
	for id, a := range m.agents {
		a.close()
		delete(m.agents, id)
	}
	m.mu.Unlock()
	m.wg.Wait()
	return nil
}

// Warm is the manager's warm-start pool (nil when warm starts are off).
func (m *Manager) Warm() *warm.Pool { return m.warm }

// background runs f in a goroutine that Close waits for; once Close has
// begun, f runs now, in the caller (a WaitGroup must not grow while it is
// waited for).
func (m *Manager) background(f func()) {
	m.mu.Lock()
	select {
	case <-m.closing:
		m.mu.Unlock()
		f()
		return
	default:
	}
	m.wg.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		f()
	}()
}

// lock takes a VM's lock; operations on different VMs never wait for each
// other.
func (m *Manager) lock(id string) func() {
	m.mu.Lock()
	l, ok := m.locks[id]
	if !ok {
		l = &sync.Mutex{}
		m.locks[id] = l
	}
	m.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// acquire finds a VM by name or id, takes its lock and reads its record
// again under the lock (another operation may have changed it meanwhile).
func (m *Manager) acquire(ctx context.Context, name string) (*record, func(), error) {
	r, err := m.get(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	unlock := m.lock(r.row.ID)
	if r, err = m.get(ctx, r.row.ID); err != nil {
		unlock()
		return nil, nil, err
	}
	return r, unlock, nil
}

func (m *Manager) forgetLock(id string) {
	m.mu.Lock()
	delete(m.locks, id)
	m.mu.Unlock()
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidName reports whether s can name a VM (a DNS label: it becomes the
// guest's hostname and NAME.vm).
func ValidName(s string) bool { return nameRE.MatchString(s) }

func newID() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// RandomName returns a name for a VM created without one.
func RandomName() string { return "vm-" + newID() }

type record struct {
	row    *store.VM
	spec   Spec
	handle vmm.Handle
}

func load(row *store.VM) (*record, error) {
	r := &record{row: row}
	if len(row.Spec) > 0 {
		if err := json.Unmarshal(row.Spec, &r.spec); err != nil {
			return nil, fmt.Errorf("vm %s: bad spec: %w", row.Name, err)
		}
	}
	if len(row.Handle) > 0 {
		if err := json.Unmarshal(row.Handle, &r.handle); err != nil {
			return nil, fmt.Errorf("vm %s: bad handle: %w", row.Name, err)
		}
	}
	return r, nil
}

func (r *record) save(ctx context.Context, st *store.Store) error {
	r.row.Spec, _ = json.Marshal(r.spec)
	r.row.Handle, _ = json.Marshal(r.handle)
	return st.UpdateVM(ctx, r.row)
}

func (m *Manager) get(ctx context.Context, name string) (*record, error) {
	row, err := m.store.GetVM(ctx, name)
	if err != nil {
		return nil, err
	}
	return load(row)
}

// derive reports the state the world is in for a record. A VM the store
// calls running whose process is gone is stopped (and the row is fixed by
// the exit watcher or reconcile, not here).
func (m *Manager) derive(ctx context.Context, r *record) string {
	switch r.row.State {
	case StateRunning, StateUnknown:
		switch m.backend.Status(ctx, r.handle) {
		case vmm.StateRunning:
			return StateRunning
		case vmm.StateUnknown:
			return StateUnknown
		default:
			return StateStopped
		}
	}
	return r.row.State
}

func (m *Manager) toAPI(ctx context.Context, r *record) api.VM {
	v := api.VM{
		ID: r.row.ID, Name: r.row.Name, State: m.derive(ctx, r), Image: r.spec.ImageName, ImageDigest: r.spec.ImageDigest,
		VCPUs: r.spec.VCPUs, MemoryMiB: r.spec.MemoryMiB, DiskBytes: r.spec.DiskBytes,
		Backend: r.spec.Backend, CreatedAt: r.row.CreatedAt, Boot: r.spec.Boot,
		ConsoleLog: m.layout.VMConsoleLog(r.row.ID), RootDisk: m.rootDisk(r.row.ID).Path,
		LastError: r.row.LastError,
	}
	if v.State == StateRunning {
		v.Health = m.health(r.row.ID)
	}
	if st, err := os.Stat(v.RootDisk); err == nil {
		if sys, ok := st.Sys().(interface{ Blocks() int64 }); ok {
			v.DiskUsed = sys.Blocks() * 512
		} else {
			v.DiskUsed = st.Size()
		}
	}
	v.Net, v.Forwards, v.Workspace = r.spec.Net, r.spec.Forwards, r.spec.Workspace
	v.WorkSlot = r.freeSlot()
	if m.net != nil {
		if l, err := m.net.Lease(r.row.ID); err == nil && l != nil {
			v.IP, v.MAC, v.Tap = l.Addr.String(), l.MAC, l.Tap
		}
	}
	if v.State == StateRunning || v.State == StateUnknown {
		v.PID, v.Accel = r.handle.PID, r.handle.Accel
		v.StartedAt = r.row.StartedAt
		if !r.row.StartedAt.IsZero() {
			v.Uptime = time.Since(r.row.StartedAt).Round(time.Second).String()
		}
	}
	return v
}

// Get describes one VM.
func (m *Manager) Get(ctx context.Context, name string) (api.VM, error) {
	r, err := m.get(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	return m.toAPI(ctx, r), nil
}

// Show is Get plus a ping of a running VM's agent (at most healthProbe):
// Health says whether it answers.
func (m *Manager) Show(ctx context.Context, name string) (api.VM, error) {
	r, err := m.get(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	v := m.toAPI(ctx, r)
	if v.State == StateRunning {
		v.Health = m.probeHealth(ctx, r)
	}
	return v, nil
}

// List describes every VM.
func (m *Manager) List(ctx context.Context) ([]api.VM, error) {
	rows, err := m.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.VM, 0, len(rows))
	for _, row := range rows {
		r, err := load(row)
		if err != nil {
			return nil, err
		}
		out = append(out, m.toAPI(ctx, r))
	}
	return out, nil
}

// ImageInUse lists the names of VMs whose root disk is based on an image.
func (m *Manager) ImageInUse(ctx context.Context, imageID string) ([]string, error) {
	rows, err := m.store.VMsUsingImage(ctx, imageID)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, r := range rows {
		names = append(names, r.Name)
	}
	return names, nil
}

// agentConn is the one connection to a VM's agent; virtio-serial carries
// one host client at a time, so every caller shares it. Its lock is never
// held across a dial (a silent guest must not wedge dropAgent, Delete or
// Close): one caller dials, the others wait for that dial or their ctx.
type agentConn struct {
	mu      sync.Mutex
	client  *agent.Client
	dialing chan struct{} // closed when the dial in flight ends
	conn    net.Conn      // the dial in flight's connection (closed by close)
	closed  bool          // dropped: a dial that ends now is thrown away
	health  string        // why the agent is not healthy ("": it is), see api.VM.Health
}

// setHealth records why the agent is unhealthy ("" once it answers).
func (a *agentConn) setHealth(why string) {
	a.mu.Lock()
	a.health = why
	a.mu.Unlock()
}

// health returns why the VM's agent is unhealthy, as last seen.
func (m *Manager) health(id string) string {
	m.mu.Lock()
	a := m.agents[id]
	m.mu.Unlock()
	if a == nil {
		return ""
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.client != nil {
		select {
		case <-a.client.Done():
			if err := a.client.Err(); err != nil {
				return "agent broke the protocol: " + err.Error()
			}
		default:
		}
	}
	return a.health
}

// probeHealth pings a running VM's agent (bounded by healthProbe) and
// records the outcome; it returns the VM's health.
func (m *Manager) probeHealth(ctx context.Context, r *record) string {
	ctx, cancel := context.WithTimeout(ctx, healthProbe)
	defer cancel()
	c, err := m.agent(ctx, r)
	if err == nil {
		if _, err = c.Ping(ctx); err != nil {
			m.mu.Lock()
			a := m.agents[r.row.ID]
			m.mu.Unlock()
			if a != nil {
				if perr := c.Err(); perr != nil {
					a.setHealth("agent broke the protocol: " + perr.Error())
				} else {
					a.setHealth(fmt.Sprintf("agent does not answer (no reply to a ping in %v)", healthProbe))
				}
			}
		} else if a := m.agentConnOf(r.row.ID); a != nil {
			a.setHealth("")
		}
	}
	return m.health(r.row.ID)
}

// healthProbe bounds vm show's ping of the agent.
const healthProbe = 2 * time.Second

func (m *Manager) agentConnOf(id string) *agentConn {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.agents[id]
}

func (a *agentConn) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	if a.client != nil {
		a.client.Close()
		a.client = nil
	}
	if a.conn != nil {
		a.conn.Close() // aborts the handshake in flight
	}
}

// agentDialTimeout bounds one connection to an agent (connect and
// handshake), whatever the caller's ctx says.
const agentDialTimeout = 15 * time.Second

// agent returns a live client of the VM's agent, dialling when needed.
func (m *Manager) agent(ctx context.Context, r *record) (*agent.Client, error) {
	m.mu.Lock()
	a, ok := m.agents[r.row.ID]
	if !ok {
		a = &agentConn{}
		m.agents[r.row.ID] = a
	}
	m.mu.Unlock()
	for {
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			return nil, errdefs.Unavailable(fmt.Sprintf("vm %s: its agent connection was closed", r.row.Name))
		}
		if a.client != nil {
			select {
			case <-a.client.Done():
				a.client = nil
			default:
				c := a.client
				a.mu.Unlock()
				return c, nil
			}
		}
		if wait := a.dialing; wait != nil {
			a.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, errdefs.Unavailable(fmt.Sprintf("vm %s: connect to agent: %v", r.row.Name, ctx.Err()))
			}
		}
		done := make(chan struct{})
		a.dialing = done
		a.mu.Unlock()
		c, err := m.dialAgent(ctx, r, a)
		a.mu.Lock()
		a.dialing, a.conn = nil, nil
		close(done)
		if err == nil && a.closed {
			c.Close()
			err = errdefs.Unavailable(fmt.Sprintf("vm %s: its agent connection was closed", r.row.Name))
		}
		if err == nil {
			a.client = c
			a.health = ""
		} else if !a.closed {
			a.health = "agent unreachable: " + err.Error()
		}
		a.mu.Unlock()
		return c, err
	}
}

// dialAgent connects and runs the handshake, bounded by agentDialTimeout;
// a.close aborts it.
func (m *Manager) dialAgent(ctx context.Context, r *record, a *agentConn) (*agent.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, agentDialTimeout)
	defer cancel()
	conn, err := m.backend.DialAgent(ctx, r.handle)
	if err != nil {
		return nil, errdefs.Unavailable(fmt.Sprintf("vm %s: connect to agent: %v", r.row.Name, err))
	}
	a.mu.Lock()
	closed := a.closed
	a.conn = conn
	a.mu.Unlock()
	if closed {
		conn.Close()
		return nil, errdefs.Unavailable(fmt.Sprintf("vm %s: its agent connection was closed", r.row.Name))
	}
	c, err := agent.Dial(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, errdefs.Unavailable(fmt.Sprintf("vm %s: agent handshake: %v", r.row.Name, err))
	}
	return c, nil
}

func (m *Manager) dropAgent(id string) {
	m.mu.Lock()
	a := m.agents[id]
	delete(m.agents, id)
	m.mu.Unlock()
	if a != nil {
		a.close()
	}
}
