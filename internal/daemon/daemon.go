// Package daemon is bangerd: it owns the state store, supervises VMs,
// serves the HTTP+JSON API on a unix socket and, later, the DNS listener.
//
// Start-up order: directories, the pid lock (a second daemon refuses,
// naming the holder), logging, the store (migrations), reconcile (VMs the
// store thinks are running are checked against the world), then the socket.
// Nothing is served before reconcile is done.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/internal/config"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/store"
	"github.com/banger-sh/banger/internal/vm"
	"github.com/banger-sh/banger/internal/vmm/auto"
)

// Options configure a daemon.
type Options struct {
	Layout paths.Layout
	Config config.Config
	// LogTo, when set, receives the log instead of the rotating log file
	// (tests).
	LogTo io.Writer
	// Ready, when set, is closed once the socket is being served.
	Ready chan<- struct{}
	// ReadyTimeout bounds the wait for a booted guest's agent (0: default).
	ReadyTimeout time.Duration
	// NoNetwork runs without the bridge, taps, nftables and DNS (API tests
	// that must not touch the host's network; VMs then get no NIC).
	NoNetwork bool
}

// Daemon is a running bangerd.
type Daemon struct {
	opts      Options
	layout    paths.Layout
	cfg       config.Config
	log       *slog.Logger
	store     *store.Store
	startedAt time.Time

	stopOnce sync.Once
	stop     chan struct{} // closed by POST /v1/daemon/stop
	reqSeq   uint64
	reqMu    sync.Mutex
	services []service

	choice  auto.Choice
	netErr  error // why networking is off, if it is
	vms     *vm.Manager
	images  *images
	uploads *uploads
	runs    *runs
}

// service is a part of the daemon with its own start and stop (the VM
// manager, the DNS server, ...).
type service interface {
	Close(ctx context.Context) error
}

// Run starts the daemon and blocks until ctx ends or a stop request
// arrives, then shuts down cleanly. VMs keep running: they are not the
// daemon's children in any way that matters.
func Run(ctx context.Context, opts Options) error {
	l := opts.Layout
	if err := l.Ensure(); err != nil {
		return fmt.Errorf("create directories: %w", err)
	}
	lock, err := acquireLock(l.DaemonLock())
	if err != nil {
		return err
	}
	defer lock.release()

	var logw io.Writer = opts.LogTo
	if logw == nil {
		rf, err := openRotating(l.DaemonLog(), int64(opts.Config.Daemon.LogMaxMiB)<<20)
		if err != nil {
			return fmt.Errorf("open log: %w", err)
		}
		defer rf.Close()
		logw = rf
	}
	log := slog.New(slog.NewJSONHandler(logw, &slog.HandlerOptions{Level: slog.LevelDebug}))

	st, err := store.Open(ctx, l.StoreFile())
	if err != nil {
		log.Error("open store", "err", err)
		return err
	}
	defer st.Close()

	d := &Daemon{
		opts: opts, layout: l, cfg: opts.Config, log: log, store: st,
		startedAt: time.Now(), stop: make(chan struct{}),
	}
	if err := d.init(ctx); err != nil {
		log.Error("init", "err", err)
		return err
	}

	ln, err := listen(l.Socket(), log)
	if err != nil {
		d.closeServices()
		return err
	}
	srv := &http.Server{
		Handler:           d.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
		ConnContext:       connContext,
	}
	log.Info("bangerd started", "pid", os.Getpid(), "socket", l.Socket(), "state", l.State)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	if opts.Ready != nil {
		close(opts.Ready)
	}

	select {
	case <-ctx.Done():
		log.Info("stopping: signal")
	case <-d.stop:
		log.Info("stopping: request")
	case err := <-errc:
		log.Error("serve", "err", err)
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(shutCtx)
	d.closeServices()
	os.Remove(l.Socket())
	log.Info("bangerd stopped")
	return nil
}

func (d *Daemon) closeServices() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := len(d.services) - 1; i >= 0; i-- {
		if err := d.services[i].Close(ctx); err != nil {
			d.log.Warn("close service", "err", err)
		}
	}
}

// listen binds the API socket: mode 0600 in the private runtime
// directory, and a peer-credential check on every connection
// (peerListener).
//
// There is no group mode. The API takes host paths that the root daemon
// opens on the caller's behalf — an image's kernel, rootfs and modules
// (work disks come as file descriptors, see uploads.go) — so a caller can
// have any root-readable file copied into a guest; access to the socket
// is root. A group with access
// would need every path-bearing request checked against the caller's own
// permissions first; until then, use sudo.
func listen(path string, log *slog.Logger) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return &peerListener{Listener: ln, uid: uint32(os.Geteuid()), log: log}, nil
}

// peerListener accepts connections from root and from the daemon's own
// user only (SO_PEERCRED), whatever the socket's mode has become.
type peerListener struct {
	net.Listener
	uid uint32
	log *slog.Logger
}

func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		cred, err := peerCred(c)
		if err == nil && (cred.Uid == 0 || cred.Uid == l.uid) {
			return c, nil
		}
		if err != nil {
			l.log.Warn("api: connection refused: no peer credentials", "err", err)
		} else {
			l.log.Warn("api: connection refused: not root nor the daemon's user", "uid", cred.Uid, "pid", cred.Pid)
		}
		c.Close()
	}
}

func peerCred(c net.Conn) (*unix.Ucred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("not a unix socket connection: %T", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return nil, err
	}
	return cred, cerr
}
