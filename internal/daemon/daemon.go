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
	"os/user"
	"strconv"
	"sync"
	"time"

	"banger/internal/config"
	"banger/internal/paths"
	"banger/internal/store"
	"banger/internal/template"
	"banger/internal/vm"
	"banger/internal/vmm/auto"
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

	choice    auto.Choice
	netErr    error // why networking is off, if it is
	vms       *vm.Manager
	templates *template.Store
	images    *images
	uploads   *uploads
	runs      *runs
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

	ln, err := listen(l.Socket())
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

// listen binds the API socket. The caller holds the pid lock, so a socket
// file left by a crashed daemon is stale and can be removed.
func listen(path string) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	mode := os.FileMode(0o600)
	if g, err := user.LookupGroup("banger"); err == nil {
		if gid, err := strconv.Atoi(g.Gid); err == nil && os.Chown(path, -1, gid) == nil {
			mode = 0o660
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
