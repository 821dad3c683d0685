package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// ServeOptions configures the guest side.
type ServeOptions struct {
	// Machine performs whole-guest operations. Nil: LinuxMachine.
	Machine Machine
	// Reaper starts exec'd programs. Nil: ChildWaiter. PID 1 uses an
	// InitReaper shared by all sessions.
	Reaper Reaper
	// Logger receives diagnostics. Nil: discarded.
	Logger *slog.Logger
	// AttachTimeout bounds how long an exec waits for its I/O streams.
	// Zero: 30 s.
	AttachTimeout time.Duration
	// OutputGrace is how long an exec's output is still forwarded after
	// the program exited while its stdout/stderr stay open (a background
	// child holding them) and idle. Zero: 2 s.
	OutputGrace time.Duration
}

func (o *ServeOptions) defaults() {
	if o.Machine == nil {
		o.Machine = LinuxMachine{}
	}
	if o.Reaper == nil {
		o.Reaper = ChildWaiter{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.AttachTimeout == 0 {
		o.AttachTimeout = 30 * time.Second
	}
	if o.OutputGrace == 0 {
		o.OutputGrace = 2 * time.Second
	}
}

// Serve runs one session on conn: handshake, then requests until the host
// goes away, the stream breaks, or ctx is done. It closes conn. Programs
// still running when the session ends are killed (their process group gets
// SIGKILL), like a shell losing its terminal.
func Serve(ctx context.Context, conn io.ReadWriteCloser, opts ServeOptions) error {
	opts.defaults()
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	rest, err := guestHandshake(conn)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("handshake: %w", err)
	}
	sess, err := yamux.Server(&prefixRWC{ReadWriteCloser: conn, pre: rest}, yamuxConfig())
	if err != nil {
		return err
	}
	s := &session{opts: opts, sess: sess, pending: map[uint64]*pendingExec{}}
	opts.Logger.Debug("session started")
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			break
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(ctx, st)
		}()
	}
	sess.Close()
	s.killAll()
	s.wg.Wait()
	opts.Logger.Debug("session ended")
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return nil
}

type session struct {
	opts ServeOptions
	sess *yamux.Session
	wg   sync.WaitGroup

	mu      sync.Mutex
	pending map[uint64]*pendingExec
	procs   map[*guestProc]struct{}
}

func (s *session) handle(ctx context.Context, st *yamux.Stream) {
	var req request
	if err := readFrame(st, maxFrame, &req); err != nil {
		s.opts.Logger.Debug("bad request", "err", err)
		st.Close()
		return
	}
	switch req.Op {
	case opPing:
		i := readInfo()
		writeFrame(st, reply{Info: &i})
		st.Close()
	case opConfigure:
		s.configure(st, req.Config)
	case opExec:
		s.exec(ctx, st, req.Exec)
	case opAttach:
		s.attach(st, req.Attach)
	case opPutTar:
		s.putTar(st, req.Path)
	case opGetTar:
		s.getTar(st, req.Path)
	case opWsScan:
		s.wsScan(st, req.Path, req.Limit)
	case opGetFiles:
		s.getFiles(st, req.Path, req.Paths)
	case opShutdown:
		s.shutdown(ctx, st)
	default:
		writeFrame(st, reply{Error: fmt.Sprintf("unknown operation %q", req.Op)})
		st.Close()
	}
}

func (s *session) configure(st *yamux.Stream, cfg *GuestConfig) {
	defer st.Close()
	if cfg == nil {
		cfg = &GuestConfig{}
	}
	m := s.opts.Machine
	var errs []error
	var steps []Step
	step := func(name string, f func() error) {
		t := time.Now()
		errs = append(errs, f())
		steps = append(steps, Step{Name: name, Micros: time.Since(t).Microseconds()})
	}
	if !cfg.Time.IsZero() {
		step("time", func() error { return m.SetTime(cfg.Time) })
	}
	if len(cfg.RandomSeed) > 0 {
		step("seed", func() error { return m.SeedRandom(cfg.RandomSeed) })
	}
	if cfg.Hostname != "" {
		step("hostname", func() error { return m.SetHostname(cfg.Hostname) })
	}
	if cfg.MachineID != "" {
		step("machine-id", func() error { return m.SetMachineID(cfg.MachineID) })
	}
	if cfg.Network != nil {
		step("network", func() error { return m.ConfigureNetwork(*cfg.Network) })
	}
	if cfg.AuthorizedKeys != nil {
		step("authorized-keys", func() error { return m.SetAuthorizedKeys(cfg.AuthorizedKeys) })
	}
	if len(cfg.Mounts) > 0 {
		step("mounts", func() error { return m.MountAll(cfg.Mounts) })
	}
	if err := errors.Join(errs...); err != nil {
		writeFrame(st, reply{Error: err.Error(), Steps: steps})
		return
	}
	writeFrame(st, reply{Steps: steps})
}

func (s *session) shutdown(ctx context.Context, st *yamux.Stream) {
	if err := s.opts.Machine.PrepareShutdown(ctx); err != nil {
		writeFrame(st, reply{Error: err.Error()})
		st.Close()
		return
	}
	writeFrame(st, reply{})
	// Wait (briefly) for the host to read the acknowledgement and close.
	st.SetReadDeadline(time.Now().Add(time.Second))
	io.Copy(io.Discard, st)
	st.Close()
	if err := s.opts.Machine.PowerOff(); err != nil {
		s.opts.Logger.Error("power off", "err", err)
	}
}

// pendingExec ties an exec's control stream to its three I/O streams,
// whichever arrives first.
type pendingExec struct {
	streams [3]net.Conn
	n       int
	ready   chan struct{}
}

func (s *session) pendingFor(id uint64) *pendingExec {
	p := s.pending[id]
	if p == nil {
		p = &pendingExec{ready: make(chan struct{})}
		s.pending[id] = p
	}
	return p
}

func (s *session) attach(st *yamux.Stream, a *attach) {
	if a == nil || a.FD < fdStdin || a.FD > fdStderr {
		st.Close()
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pendingFor(a.ID)
	if p.streams[a.FD] != nil {
		st.Close()
		return
	}
	p.streams[a.FD] = st
	p.n++
	if p.n == 3 {
		close(p.ready)
	}
}

// waitAttached waits for the three streams of exec id.
func (s *session) waitAttached(id uint64) ([3]net.Conn, error) {
	s.mu.Lock()
	p := s.pendingFor(id)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, id)
		s.mu.Unlock()
	}()
	t := time.NewTimer(s.opts.AttachTimeout)
	defer t.Stop()
	select {
	case <-p.ready:
		return p.streams, nil
	case <-t.C:
	case <-s.sess.CloseChan():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range p.streams {
		if c != nil {
			c.Close()
		}
	}
	return [3]net.Conn{}, errors.New("exec streams not attached in time")
}

func (s *session) track(p *guestProc, add bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.procs == nil {
		s.procs = map[*guestProc]struct{}{}
	}
	if add {
		s.procs[p] = struct{}{}
	} else {
		delete(s.procs, p)
	}
}

func (s *session) killAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.procs {
		p.kill()
	}
}
