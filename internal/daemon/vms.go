package daemon

import (
	"bufio"
	"context"
	"encoding/binary"
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
	"syscall"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/agentbin"
	"github.com/banger-sh/banger/internal/consolelog"
	"github.com/banger-sh/banger/internal/crashpoint"
	"github.com/banger-sh/banger/internal/diskspace"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/image"
	"github.com/banger-sh/banger/internal/network"
	"github.com/banger-sh/banger/internal/run"
	"github.com/banger-sh/banger/internal/system"
	"github.com/banger-sh/banger/internal/version"
	"github.com/banger-sh/banger/internal/vm"
	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/vmm/auto"
	"github.com/banger-sh/banger/internal/vmm/firecracker"
	"github.com/banger-sh/banger/internal/vmm/qemu"
	"github.com/banger-sh/banger/internal/warm"
)

// init prepares the daemon's services before the socket is served: the
// hypervisor backend, the VM manager, the image registry, and reconcile.
func (d *Daemon) init(ctx context.Context) error {
	ch := auto.Choose(d.cfg.Backend, auto.Host{Root: "/", LookPath: system.LookPath, FirecrackerVersion: firecracker.Version})
	d.choice = ch
	var backend vmm.Backend
	switch ch.Backend {
	case "qemu":
		backend = qemu.New(qemu.WithLogger(d.log.With("component", "qemu")))
	case "firecracker":
		backend = firecracker.New(firecracker.WithLogger(d.log.With("component", "firecracker")))
	default:
		// No backend can run: the daemon still serves (images, doctor-like
		// answers), and VM operations explain why they cannot.
		backend = unavailableBackend{why: ch.Reason}
	}
	d.log.Info("backend", "backend", ch.Backend, "accel", ch.Accel, "why", ch.Reason)
	d.removeStaleSpools()
	d.images = &images{store: d.store, layout: d.layout, cfg: d.cfg, log: d.log, building: map[string]*sync.Mutex{}}
	netm := d.startNetwork(ctx)
	var keys []string
	if pub, err := d.ensureSSHKey(ctx); err != nil {
		d.log.Warn("no ssh key: vm ssh will not work", "err", err)
	} else {
		keys = []string{pub}
	}
	var inUse func(string) bool
	templates := warm.NewStore(d.layout, backend, warm.StoreOptions{
		Logger: d.log.With("component", "template"),
		InUse:  func(key string) bool { return inUse != nil && inUse(key) },
	})
	d.vms = vm.New(vm.Options{
		Store: d.store, Layout: d.layout, Config: d.cfg, Backend: backend, Images: d.images, Network: netm, AuthorizedKeys: keys,
		Templates: templates,
		Log:       d.log.With("component", "vm"), ReadyTimeout: d.opts.ReadyTimeout,
		Spares: d.cfg.VM.Spares,
	})
	d.images.vms = d.vms
	d.uploads = newUploads(d.layout.UploadsDir())
	d.runs = run.New(run.Options{VMs: runVMs{d.vms}, Store: d.store, Layout: d.layout, Log: d.log.With("component", "run"),
		Identity: func() (string, string, string) {
			return version.Version, agentbin.Digest(), d.backendName() + ": " + d.choice.Reason
		}})
	if err := image.RemoveStaleTemp(d.layout.TmpDir()); err != nil {
		d.log.Warn("remove stale image build dirs", "err", err)
	}
	inUse = d.vms.TemplateInUse
	if err := d.vms.Reconcile(ctx); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	d.vms.Warm().PruneStale(ctx, func(name string) (string, bool) {
		im, err := d.store.GetImage(ctx, name)
		if err != nil {
			return "", false
		}
		return im.Digest, true
	}, d.vms.TemplateInUse)
	d.services = append(d.services, d.vms, d.uploads, d.watchConsoles())
	// Runs go after the VMs: they are closed first (their commands ended,
	// exports finished) while the VM manager still works. Runs a stopped
	// or crashed daemon left are finished in the background.
	if err := d.runs.Resume(ctx); err != nil {
		d.log.Warn("resume runs", "err", err)
	}
	d.services = append(d.services, d.runs)
	if netm != nil {
		dns, err := netm.StartDNS(ctx, network.DNSOptions{Lookup: d.vms.LookupAddr, Reverse: d.vms.LookupName})
		if err != nil {
			// DNS is a convenience: VMs still work by address.
			d.log.Error("dns server not started", "err", err)
			d.netErr = fmt.Errorf("DNS server: %w", err)
		} else {
			d.services = append(d.services, closerService{dns})
		}
	}
	return nil
}

// startNetwork brings up the bridge, tap pool and nftables table. Without
// it (no root, no tun, no nftables) VMs still run, without a NIC.
func (d *Daemon) startNetwork(ctx context.Context) *network.Manager {
	if d.opts.NoNetwork {
		d.netErr = errors.New("networking disabled (daemon.Options.NoNetwork)")
		return nil
	}
	o, err := network.OptionsFromConfig(d.cfg.Network, d.store, d.log.With("component", "network"))
	if err == nil {
		var m *network.Manager
		if m, err = network.New(o); err == nil {
			if err = m.Start(ctx); err == nil {
				d.services = append(d.services, netService{m: m, d: d})
				return m
			}
		}
	}
	d.log.Error("networking unavailable: VMs get no network", "err", err)
	d.netErr = err
	return nil
}

// ensureSSHKey creates banger's ed25519 key pair on first start and
// returns the public key line.
func (d *Daemon) ensureSSHKey(ctx context.Context) (string, error) {
	key := d.layout.SSHKey()
	if _, err := os.Stat(key + ".pub"); err != nil {
		if err := os.MkdirAll(filepath.Dir(key), 0o700); err != nil {
			return "", err
		}
		os.Remove(key)
		if _, err := system.Run(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "banger", "-f", key); err != nil {
			return "", err
		}
	}
	b, err := os.ReadFile(key + ".pub")
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// netService stops networking with the daemon: running VMs keep their
// taps and rules; with no VM left, the bridge, pool taps and nftables
// tables go too, so a stopped banger leaves nothing in the host's network.
type netService struct {
	m *network.Manager
	d *Daemon
}

func (n netService) Close(ctx context.Context) error {
	if vms, err := n.d.store.ListVMs(ctx); err == nil && len(vms) == 0 {
		n.d.log.Info("no VMs left: removing bridge, taps and nftables tables")
		return n.m.Teardown(ctx)
	}
	return n.m.Close()
}

// watchConsoles bounds every VM's console log (see consolelog) from now
// until the service is closed: first what grew while no daemon ran, then
// once a second.
func (d *Daemon) watchConsoles() service {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	log := d.log.With("component", "console")
	go func() {
		defer close(done)
		consolelog.Watch(ctx, d.layout.VMConsoleLog("*"), time.Second, log)
	}()
	return funcService(func(context.Context) error {
		cancel()
		<-done
		return nil
	})
}

// funcService is a daemon service that is only a Close.
type funcService func(context.Context) error

func (f funcService) Close(ctx context.Context) error { return f(ctx) }

// closerService adapts an io.Closer to a daemon service.
type closerService struct{ c interface{ Close() error } }

func (c closerService) Close(context.Context) error { return c.c.Close() }

func (d *Daemon) backendName() string {
	if d.choice.Backend == "" {
		return "none"
	}
	return d.choice.Backend + " (" + d.choice.Accel + ")"
}

// unavailableBackend answers every VM operation with the reason no
// backend can run.
type unavailableBackend struct{ why string }

func (u unavailableBackend) err() error {
	return errdefs.Unavailable("no hypervisor backend can run here: " + u.why)
}
func (u unavailableBackend) Name() string { return "none" }

// RootFormats: nothing can start, so no format is accepted.
func (u unavailableBackend) RootFormats() []string              { return nil }
func (u unavailableBackend) FindProcesses(string) []vmm.Process { return nil }
func (u unavailableBackend) ExitReason([]byte) string           { return "" }
func (u unavailableBackend) Available(context.Context) vmm.Availability {
	return vmm.Availability{Reason: u.why}
}
func (u unavailableBackend) Start(context.Context, vmm.Spec) (vmm.Handle, error) {
	return vmm.Handle{}, u.err()
}
func (u unavailableBackend) Status(context.Context, vmm.Handle) vmm.State { return vmm.StateExited }
func (u unavailableBackend) Kill(context.Context, vmm.Handle) error       { return nil }
func (u unavailableBackend) WaitExit(ctx context.Context, h vmm.Handle) error {
	return nil
}
func (u unavailableBackend) DialAgent(context.Context, vmm.Handle) (net.Conn, error) {
	return nil, u.err()
}

func (d *Daemon) vmRoutes(mux *http.ServeMux) {
	d.imageRoutes(mux)
	d.runRoutes(mux)
	d.fileRoutes(mux)
	mux.HandleFunc("GET /v1/vms", func(w http.ResponseWriter, r *http.Request) {
		list, err := d.vms.List(r.Context())
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, list)
	})
	mux.HandleFunc("GET /v1/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		v, err := d.vms.Show(r.Context(), r.PathValue("name"))
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, v)
	})
	mux.HandleFunc("POST /v1/uploads", d.handleUpload)
	mux.HandleFunc("POST /v1/vms", func(w http.ResponseWriter, r *http.Request) {
		var req api.CreateVMRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, r, err)
			return
		}
		if err := d.resolveWorkspace(r.Context(), req.Workspace); err != nil {
			writeError(w, r, err)
			return
		}
		if req.Workspace != nil {
			defer closeUploads(req.Workspace) // the VM copied it, or nobody will
		}
		st := newEventStream(w)
		v, err := d.vms.Create(r.Context(), req, st.Progress)
		st.finish(v, d.explainFull(err))
	})
	mux.HandleFunc("DELETE /v1/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		force, err := queryBool(r, "force")
		if err != nil {
			writeError(w, r, err)
			return
		}
		if err := d.vms.Delete(r.Context(), r.PathValue("name"), vm.DeleteOptions{Force: force}); err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, map[string]string{"deleted": r.PathValue("name")})
	})
	mux.HandleFunc("POST /v1/vms/{name}/stop", func(w http.ResponseWriter, r *http.Request) {
		var req api.StopVMRequest
		if r.ContentLength != 0 {
			if err := decodeBody(r, &req); err != nil {
				writeError(w, r, err)
				return
			}
		}
		var timeout time.Duration
		if req.Timeout != "" {
			var err error
			if timeout, err = time.ParseDuration(req.Timeout); err != nil || timeout <= 0 {
				writeError(w, r, errdefs.InvalidArgument(fmt.Sprintf("--timeout %q is not a positive duration", req.Timeout)))
				return
			}
		}
		v, err := d.vms.Stop(r.Context(), r.PathValue("name"), vm.StopOptions{Force: req.Force, Timeout: timeout})
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, v)
	})
	mux.HandleFunc("POST /v1/vms/{name}/start", func(w http.ResponseWriter, r *http.Request) {
		st := newEventStream(w)
		v, err := d.vms.Start(r.Context(), r.PathValue("name"), st.Progress)
		st.finish(v, err)
	})
	mux.HandleFunc("POST /v1/vms/{name}/set", func(w http.ResponseWriter, r *http.Request) {
		var req api.SetVMRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, r, err)
			return
		}
		v, err := d.vms.Set(r.Context(), r.PathValue("name"), vm.SetOptions{VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB, Net: req.Net})
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, v)
	})
	mux.HandleFunc("GET /v1/vms/{name}/console", d.handleConsole)
	mux.HandleFunc("POST /v1/vms/{name}/workspace", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		// The base is known only once the client has produced the whole
		// stream: it arrives in the request's trailers.
		base := func() api.Base {
			io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
			return api.Base{Head: r.Trailer.Get("X-Banger-Base-Head"), Tree: r.Trailer.Get("X-Banger-Base-Tree"), Commit: r.Trailer.Get("X-Banger-Base-Commit")}
		}
		v, err := d.vms.PrepareTar(r.Context(), r.PathValue("name"), q.Get("path"), q.Get("repo"), base, r.Body)
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, v)
	})
	mux.HandleFunc("POST /v1/vms/{name}/workspace/disk", func(w http.ResponseWriter, r *http.Request) {
		var ws api.WorkspaceSpec
		if err := decodeBody(r, &ws); err != nil {
			writeError(w, r, err)
			return
		}
		if err := d.resolveWorkspace(r.Context(), &ws); err != nil {
			writeError(w, r, err)
			return
		}
		defer closeUploads(&ws) // the VM copied it, or nobody will
		v, err := d.vms.PrepareDisk(r.Context(), r.PathValue("name"), &ws)
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, v)
	})
	mux.HandleFunc("GET /v1/vms/{name}/workspace/export", d.handleExport)
	mux.HandleFunc("POST /v1/vms/{name}/workspace/exported", func(w http.ResponseWriter, r *http.Request) {
		var req api.ExportedRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, r, err)
			return
		}
		if err := d.vms.MarkExported(r.Context(), r.PathValue("name"), req.SHA256); err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, map[string]string{"exported": req.SHA256})
	})
	mux.HandleFunc("POST /v1/vms/{name}/ssh", func(w http.ResponseWriter, r *http.Request) {
		info, err := d.vms.PrepareSSH(r.Context(), r.PathValue("name"))
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, info)
	})
	mux.HandleFunc("POST /v1/vms/{name}/ports", func(w http.ResponseWriter, r *http.Request) {
		var req api.ForwardRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, r, err)
			return
		}
		f, err := d.vms.AddForward(r.Context(), r.PathValue("name"), req.Spec)
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, map[string]string{"forward": f})
	})
	mux.HandleFunc("POST /v1/vms/{name}/exec", d.handleExec)
}

// handleConsole streams a VM's console log; with ?follow=1 it keeps
// streaming until the client goes away.
func (d *Daemon) handleConsole(w http.ResponseWriter, r *http.Request) {
	v, err := d.vms.Get(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	follow, err := queryBool(r, "follow")
	if err != nil {
		writeError(w, r, err)
		return
	}
	f, err := os.Open(v.ConsoleLog)
	if err != nil && !follow {
		writeError(w, r, errdefs.NotFound(fmt.Sprintf("vm %s has no console log yet", v.Name)))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(200)
	rc := http.NewResponseController(w)
	buf := make([]byte, 64<<10)
	for {
		if f == nil {
			f, _ = os.Open(v.ConsoleLog)
		}
		if f != nil {
			for {
				n, err := f.Read(buf)
				if n > 0 {
					if _, werr := w.Write(buf[:n]); werr != nil {
						f.Close()
						return
					}
				}
				if err != nil || n == 0 {
					break
				}
			}
			// Shorter than what was read: the log was trimmed (see
			// consolelog). Go on from its end, saying so.
			if pos, err := f.Seek(0, io.SeekCurrent); err == nil {
				if st, err := f.Stat(); err == nil && st.Size() < pos {
					f.Seek(0, io.SeekEnd)
					if _, err := io.WriteString(w, "\n[banger: console log trimmed; some output was dropped]\n"); err != nil {
						f.Close()
						return
					}
				}
			}
			rc.Flush()
		}
		if !follow {
			if f != nil {
				f.Close()
			}
			return
		}
		select {
		case <-r.Context().Done():
			if f != nil {
				f.Close()
			}
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// exportSpoolPattern names the spool files of handleExport.
const exportSpoolPattern = "export-*.patch"

// explainFull names the banger directory that is full when err came from
// a full file system (see diskspace.Explain).
func (d *Daemon) explainFull(err error) error {
	return diskspace.Explain(err, d.layout.State, d.layout.Cache, d.layout.Runtime)
}

// errWriter keeps the first write error, which a writer's caller may
// not look at (the agent's output streams).
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	if err != nil {
		e.err = fmt.Errorf("spool the export: %w", err)
	}
	return n, err
}

// removeStaleSpools removes export spools a daemon that died mid-export
// left behind: in the spool dir, and in the runtime dir where earlier
// versions spooled. The caller holds the pid lock (no export runs).
func (d *Daemon) removeStaleSpools() {
	for _, dir := range []string{d.layout.SpoolDir(), d.layout.Runtime} {
		stale, _ := filepath.Glob(filepath.Join(dir, exportSpoolPattern))
		for _, p := range stale {
			if err := os.Remove(p); err != nil {
				d.log.Warn("remove stale export spool", "path", p, "err", err)
			} else {
				d.log.Info("removed stale export spool", "path", p)
			}
		}
	}
}

// handleExport streams a VM's workspace patch (untrusted guest output: the
// client validates it). The patch is spooled to a file first so that a
// failure half-way is an error response, never a truncated patch. The
// spool is on disk, in the state dir (not the runtime dir, which may be
// RAM), and removed when the request ends or, after a crash, at start.
func (d *Daemon) handleExport(w http.ResponseWriter, r *http.Request) {
	if err := os.MkdirAll(d.layout.SpoolDir(), 0o700); err != nil {
		writeError(w, r, err)
		return
	}
	f, err := os.CreateTemp(d.layout.SpoolDir(), exportSpoolPattern)
	if err != nil {
		writeError(w, r, err)
		return
	}
	defer os.Remove(f.Name())
	defer f.Close()
	spool := &errWriter{w: f}
	if err := d.vms.ExportPatch(r.Context(), r.PathValue("name"), spool); err != nil || spool.err != nil {
		writeError(w, r, d.explainFull(errors.Join(err, spool.err)))
		return
	}
	n, _ := f.Seek(0, io.SeekCurrent)
	f.Seek(0, io.SeekStart)
	crashpoint.Hit("export.spooled")
	w.Header().Set("Content-Type", "text/x-diff")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	w.WriteHeader(200)
	io.CopyN(w, f, n/2)
	if crashpoint.Armed("export.half") { // half the patch reaches the client, then the daemon dies
		http.NewResponseController(w).Flush()
		crashpoint.Hit("export.half")
	}
	io.Copy(w, f)
}

// handleExec runs a command in a VM over an upgraded connection (see
// api.ExecRequest for the framing).
func (d *Daemon) handleExec(w http.ResponseWriter, r *http.Request) {
	var req api.ExecRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), api.ExecUpgrade) {
		writeError(w, r, errdefs.InvalidArgument("exec needs 'Connection: Upgrade' and 'Upgrade: "+api.ExecUpgrade+"'"))
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		writeError(w, r, fmt.Errorf("exec: hijack: %w", err))
		return
	}
	defer conn.Close()
	// The request's context ends when the handler returns; the exec lives
	// as long as the connection.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()

	fw := &frameWriter{w: conn}
	fw.mu.Lock() // nothing is written before the 101 (or the error)
	var stdin io.Reader
	var stdinW *io.PipeWriter
	if req.Stdin {
		pr, pw := io.Pipe()
		stdin, stdinW = pr, pw
	}
	p, err := d.vms.Exec(ctx, r.PathValue("name"), req, stdin, fw.stream(api.FrameStdout), fw.stream(api.FrameStderr))
	var se *agent.StartError
	if errors.As(err, &se) {
		// The guest could not run the program: that is the command's
		// outcome (127 not found, 126 not executable), as in a shell.
		fmt.Fprintf(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n", api.ExecUpgrade)
		api.WriteFrame(conn, api.FrameStderr, []byte(fmt.Sprintf("banger: %s: %s\n", se.Argv0, se.Message)))
		b, _ := json.Marshal(api.ExecExit{Code: se.Code})
		api.WriteFrame(conn, api.FrameExit, b)
		fw.mu.Unlock()
		return
	}
	if err != nil {
		e := api.ToWire(err)
		b, _ := json.Marshal(e)
		fmt.Fprintf(conn, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
			api.HTTPStatus(e.Code), http.StatusText(api.HTTPStatus(e.Code)), len(b), b)
		fw.mu.Unlock()
		return
	}
	fmt.Fprintf(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n", api.ExecUpgrade)
	fw.mu.Unlock()

	go func() {
		// Client → guest: stdin, signals, window size. A client that goes
		// away hangs the command up, as ssh does.
		rd := bufio.NewReader(io.MultiReader(brw.Reader, conn))
		buf := make([]byte, 0, 64<<10)
		for {
			typ, payload, err := api.ReadFrame(rd, buf)
			if err != nil {
				if stdinW != nil {
					stdinW.CloseWithError(io.ErrUnexpectedEOF)
				}
				select {
				case <-p.Done():
				default:
					p.Signal(syscall.SIGHUP)
				}
				return
			}
			switch typ {
			case api.FrameStdin:
				if stdinW != nil {
					stdinW.Write(payload)
				}
			case api.FrameStdinEOF:
				if stdinW != nil {
					stdinW.Close()
				}
			case api.FrameSignal:
				if len(payload) == 1 {
					p.Signal(syscall.Signal(payload[0]))
				}
			case api.FrameResize:
				if len(payload) == 4 {
					p.Resize(binary.BigEndian.Uint16(payload), binary.BigEndian.Uint16(payload[2:]))
				}
			}
		}
	}()
	st, err := p.Wait()
	exit := api.ExecExit{Code: st.Code, Signal: st.Signal}
	if err != nil {
		exit.Error = api.ToWire(err)
	}
	b, _ := json.Marshal(exit)
	fw.write(api.FrameExit, b)
}

// frameWriter serialises frames from several writers onto one connection.
type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (f *frameWriter) write(typ byte, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return api.WriteFrame(f.w, typ, p)
}

func (f *frameWriter) stream(typ byte) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		n := 0
		for len(p) > 0 {
			c := p
			if len(c) > api.MaxFrame {
				c = c[:api.MaxFrame]
			}
			if err := f.write(typ, c); err != nil {
				return n, err
			}
			n += len(c)
			p = p[len(c):]
		}
		return n, nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
