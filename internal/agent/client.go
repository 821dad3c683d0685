package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
)

// yamuxConfig is shared by both sides. Keep-alives are off: the transport
// reports a dead peer itself (socket EOF), and a ping timing out on a busy
// emulated guest must not kill a healthy session. The stream window is
// what a receiver buffers at most of a stream it does not read, and what
// a sender may have in flight: 1 MiB made a host export of 1,000 changed
// files of Go's tree (18.5 MB fetched) wait on window updates (1.08x/1.02x
// of native git diff at 1 vCPU; 8 MiB: 0.96x/0.93x, interleaved A/B,
// medians of 5), but 8 MiB let the host's buffer of one stream grow to
// 22-36 MiB of heap while the daemon checked a 24 MiB patch
// (TestDeleteChecksBigPatchInBoundedMemory, its bound 32 MiB: 5-8 MiB at
// 1 MiB, 7-10.5 MiB at 2 MiB, 10-21 MiB at 4 MiB). 2 MiB keeps a margin;
// an A/B of the export at 2 MiB against 8 MiB was lost in the noise of a
// slow day (0.86-1.38x of native at 1 vCPU for either).
func yamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = false
	c.MaxStreamWindowSize = 2 << 20
	c.ConnectionWriteTimeout = 30 * time.Second
	c.LogOutput = io.Discard
	return c
}

// Client is the host side of one agent session.
type Client struct {
	sess   *yamux.Session
	guard  *frameGuard
	nextID atomic.Uint64
}

// HandshakeTimeout bounds Dial's handshake whatever its ctx says: an agent
// that is up answers in milliseconds, so a guest silent for this long is
// not going to answer (callers that wait for a booting guest retry).
const HandshakeTimeout = 15 * time.Second

// Dial runs the handshake on conn (from the VMM backend) and starts a
// session. ctx bounds the handshake only, and HandshakeTimeout bounds it
// too. The Client owns conn from then on.
//
// What the guest sends is policed before yamux reads it (see frameGuard):
// a guest that opens a stream or sends a ping ends its session, and the
// operations in flight fail with an error matching ErrProtocol.
func Dial(ctx context.Context, conn net.Conn) (*Client, error) {
	ctx, cancel := context.WithTimeout(ctx, HandshakeTimeout)
	defer cancel()
	rest, err := hostHandshake(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	g := newFrameGuard(&prefixConn{Conn: conn, pre: rest})
	sess, err := yamux.Client(&guardedConn{Conn: conn, r: g}, yamuxConfig())
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("agent session: %w", err)
	}
	return &Client{sess: sess, guard: g}, nil
}

// guardedConn is conn whose reads go through a frameGuard.
type guardedConn struct {
	net.Conn
	r io.Reader
}

func (c *guardedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// closedErr is the error of an operation on a session that ended: why the
// host ended it when the guest broke the protocol, else ErrClosed.
func (c *Client) closedErr(op string) error {
	if v := c.guard.violation(); v != nil {
		return fmt.Errorf("agent %s: %w (session ended)", op, v)
	}
	return fmt.Errorf("agent %s: %w", op, ErrClosed)
}

// Err is why the session ended, when the host ended it because the guest
// broke the protocol (it matches ErrProtocol); nil otherwise.
func (c *Client) Err() error { return c.guard.violation() }

// Close ends the session and closes the connection.
func (c *Client) Close() error { return c.sess.Close() }

// Done is closed when the session ends (guest gone, connection closed).
func (c *Client) Done() <-chan struct{} { return c.sess.CloseChan() }

func (c *Client) open(ctx context.Context, req request) (*yamux.Stream, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st, err := c.sess.OpenStream()
	if err != nil {
		if c.sess.IsClosed() {
			return nil, c.closedErr(req.Op)
		}
		return nil, fmt.Errorf("agent %s: %w", req.Op, err)
	}
	if err := writeFrame(st, req); err != nil {
		st.Close()
		return nil, fmt.Errorf("agent %s: %w", req.Op, err)
	}
	return st, nil
}

// call sends req on a new stream and reads one reply.
func (c *Client) call(ctx context.Context, req request, max int) (reply, error) {
	st, err := c.open(ctx, req)
	if err != nil {
		return reply{}, err
	}
	defer st.Close()
	stop := watchCtx(ctx, st)
	defer stop()
	var rep reply
	if err := readFrame(st, max, &rep); err != nil {
		return reply{}, c.opErr(ctx, req.Op, err)
	}
	if rep.Error != "" {
		return rep, &RemoteError{Op: req.Op, Message: bounded(rep.Error, 4096)}
	}
	return rep, nil
}

func (c *Client) opErr(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("agent %s: %w", op, ctx.Err())
	}
	if c.sess.IsClosed() {
		return c.closedErr(op)
	}
	return fmt.Errorf("agent %s: %w", op, err)
}

func bounded(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// Ping asks the guest who it is. It is cheap: use it as the readiness probe.
func (c *Client) Ping(ctx context.Context) (Info, error) {
	rep, err := c.call(ctx, request{Op: opPing}, maxReplyFrame)
	if err != nil {
		return Info{}, err
	}
	if rep.Info == nil {
		return Info{}, fmt.Errorf("agent ping: reply without info")
	}
	i := *rep.Info
	i.Version = bounded(i.Version, maxInfoString)
	i.Hostname = bounded(i.Hostname, maxInfoString)
	i.Kernel = bounded(i.Kernel, maxInfoString)
	i.BootID = bounded(i.BootID, maxInfoString)
	return i, nil
}

// Configure applies per-VM settings in the guest.
func (c *Client) Configure(ctx context.Context, cfg GuestConfig) error {
	_, err := c.ConfigureSteps(ctx, cfg)
	return err
}

// ConfigureSteps is Configure, also returning how long each step took in
// the guest (for logs and benchmarks).
func (c *Client) ConfigureSteps(ctx context.Context, cfg GuestConfig) ([]Step, error) {
	r, err := c.call(ctx, request{Op: opConfigure, Config: &cfg}, maxReplyFrame)
	if len(r.Steps) > 16 { // from the guest: bounded
		r.Steps = r.Steps[:16]
	}
	return r.Steps, err
}

// Shutdown powers the guest off cleanly: the guest stops its processes,
// syncs, remounts / read-only, acknowledges, then powers off (the VMM exits
// shortly after). It returns once the guest acknowledged.
func (c *Client) Shutdown(ctx context.Context) error {
	_, err := c.call(ctx, request{Op: opShutdown}, maxReplyFrame)
	return err
}

// PutTar extracts the tar stream r under dir in the guest (dir is created).
func (c *Client) PutTar(ctx context.Context, dir string, r io.Reader) error {
	st, err := c.open(ctx, request{Op: opPutTar, Path: dir})
	if err != nil {
		return err
	}
	defer st.Close()
	stop := watchCtx(ctx, st)
	defer stop()
	copyErr := make(chan error, 1)
	go func() {
		_, err := io.Copy(st, r)
		st.Close() // half-close: the guest sees the end of the tar
		copyErr <- err
	}()
	var rep reply
	if err := readFrame(st, maxReplyFrame, &rep); err != nil {
		st.SetWriteDeadline(time.Unix(1, 0))
		return c.opErr(ctx, opPutTar, err)
	}
	if rep.Error != "" {
		st.SetWriteDeadline(time.Unix(1, 0)) // unblock the copy
		return &RemoteError{Op: opPutTar, Message: bounded(rep.Error, 4096)}
	}
	if err := <-copyErr; err != nil {
		return fmt.Errorf("agent put-tar: read input: %w", err)
	}
	return nil
}

// GetTar writes to w a tar of path in the guest; its entries are named
// after path's last element (like tar -C dir(path) -c base(path)). More
// than limit bytes of tar is an error wrapping ErrLimitExceeded, after at
// most limit bytes were written to w. limit <= 0 means no limit.
func (c *Client) GetTar(ctx context.Context, path string, w io.Writer, limit int64) error {
	st, err := c.open(ctx, request{Op: opGetTar, Path: path})
	if err != nil {
		return err
	}
	// Closing our side tells the guest to stop sending.
	defer st.Close()
	stop := watchCtx(ctx, st)
	defer stop()
	var rep reply
	if err := readFrame(st, maxReplyFrame, &rep); err != nil {
		return c.opErr(ctx, opGetTar, err)
	}
	if rep.Error != "" {
		return &RemoteError{Op: opGetTar, Message: bounded(rep.Error, 4096)}
	}
	var total int64
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(st, hdr[:]); err != nil {
			return c.opErr(ctx, opGetTar, err)
		}
		n := int64(binary.BigEndian.Uint32(hdr[:]))
		if n == 0 {
			break
		}
		if n > maxChunk {
			return fmt.Errorf("agent get-tar: %w: chunk of %d bytes", ErrFrameTooLarge, n)
		}
		if limit > 0 && total+n > limit {
			if _, err := io.CopyN(w, st, limit-total); err != nil {
				return c.opErr(ctx, opGetTar, err)
			}
			return fmt.Errorf("agent get-tar %s: %w (%d bytes)", path, ErrLimitExceeded, limit)
		}
		if _, err := io.CopyN(w, st, n); err != nil {
			return c.opErr(ctx, opGetTar, err)
		}
		total += n
	}
	if err := readFrame(st, maxReplyFrame, &rep); err != nil {
		return c.opErr(ctx, opGetTar, err)
	}
	if rep.Error != "" {
		return &RemoteError{Op: opGetTar, Message: bounded(rep.Error, 4096)}
	}
	return nil
}

// ExecRequest describes a program to run in the guest.
type ExecRequest struct {
	Argv []string
	// Env is added to the default environment (PATH, HOME=/root, TERM,
	// USER, LOGNAME, SHELL); an entry replaces a default of the same name.
	Env []string
	// Dir is the working directory (default /root, or / if it is missing).
	Dir string
	// TTY runs the program on a pseudo-terminal of Rows x Cols (default
	// 24x80); Stdout then receives both output streams.
	TTY        bool
	Rows, Cols uint16
	Stdin      io.Reader // nil: empty
	Stdout     io.Writer // nil: discarded
	Stderr     io.Writer // nil: discarded
}

// Process is a program running in the guest.
type Process struct {
	Pid int // in the guest

	ctl     *yamux.Stream
	wmu     sync.Mutex
	streams []*yamux.Stream
	done    chan struct{}
	status  ExitStatus
	err     error
	stopCtx func() bool
}

// Exec starts a program in the guest. If ctx is cancelled before the program
// ends, its process group is killed (SIGKILL), as with exec.CommandContext;
// pass context.WithoutCancel for a program that must outlive ctx. The start
// fails with a *StartError (code 127, errors.Is ErrCommandNotFound, or 126)
// when the guest cannot run the program.
func (c *Client) Exec(ctx context.Context, req ExecRequest) (*Process, error) {
	if len(req.Argv) == 0 {
		return nil, errors.New("agent exec: empty argv")
	}
	id := c.nextID.Add(1)
	ctl, err := c.open(ctx, request{Op: opExec, Exec: &execStart{
		ID: id, Argv: req.Argv, Env: req.Env, Dir: req.Dir,
		TTY: req.TTY, Rows: req.Rows, Cols: req.Cols,
	}})
	if err != nil {
		return nil, err
	}
	streams := []*yamux.Stream{ctl}
	closeAll := func() {
		for _, s := range streams {
			s.Close()
		}
	}
	for fd := fdStdin; fd <= fdStderr; fd++ {
		st, err := c.open(ctx, request{Op: opAttach, Attach: &attach{ID: id, FD: fd}})
		if err != nil {
			closeAll()
			return nil, err
		}
		streams = append(streams, st)
	}
	stop := watchCtx(ctx, ctl)
	var rep reply
	err = readFrame(ctl, maxReplyFrame, &rep)
	stop()
	if err != nil {
		closeAll()
		return nil, c.opErr(ctx, opExec, err)
	}
	if rep.StartError != nil {
		closeAll()
		se := *rep.StartError
		se.Message = bounded(se.Message, 4096)
		se.Argv0 = req.Argv[0]
		return nil, &se
	}
	if rep.Error != "" {
		closeAll()
		return nil, &RemoteError{Op: opExec, Message: bounded(rep.Error, 4096)}
	}
	p := &Process{Pid: rep.Pid, ctl: ctl, streams: streams, done: make(chan struct{})}

	stdin, stdout, stderr := streams[1], streams[2], streams[3]
	go func() {
		if req.Stdin != nil {
			io.Copy(stdin, req.Stdin)
		}
		stdin.Close() // EOF for the guest process
	}()
	// Like exec.Cmd: one writer for both streams gets one Write at a time.
	outW, errW := req.Stdout, req.Stderr
	if outW != nil && sameWriter(outW, errW) {
		lw := &lockedWriter{w: outW}
		outW, errW = lw, lw
	}
	var outputs sync.WaitGroup
	outputs.Add(2)
	go drainTo(&outputs, outW, stdout)
	go drainTo(&outputs, errW, stderr)
	p.stopCtx = context.AfterFunc(ctx, func() { p.Signal(syscall.SIGKILL) })
	go func() {
		var rep reply
		err := readFrame(ctl, maxReplyFrame, &rep)
		switch {
		case err != nil:
			if c.sess.IsClosed() {
				err = c.closedErr("exec")
			}
			p.err = fmt.Errorf("agent exec %s: no exit status: %w", req.Argv[0], err)
		case rep.Exit == nil:
			p.err = fmt.Errorf("agent exec %s: reply without exit status", req.Argv[0])
		default:
			p.status = *rep.Exit
			outputs.Wait()
		}
		p.stopCtx()
		for _, s := range streams {
			s.Close()
		}
		close(p.done)
	}()
	return p, nil
}

// drainTo copies a guest output stream to w. When w fails, the rest is
// discarded so the guest process never blocks on a host that stopped
// reading.
func drainTo(wg *sync.WaitGroup, w io.Writer, st *yamux.Stream) {
	defer wg.Done()
	if w == nil {
		w = io.Discard
	}
	if _, err := io.Copy(w, st); err != nil {
		io.Copy(io.Discard, st)
	}
}

func sameWriter(a, b io.Writer) (same bool) {
	defer func() {
		if recover() != nil {
			same = false // uncomparable dynamic types
		}
	}()
	return a == b
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Wait waits for the program to end and for its output to be copied.
func (p *Process) Wait() (ExitStatus, error) {
	<-p.done
	return p.status, p.err
}

// Done is closed when Wait would return.
func (p *Process) Done() <-chan struct{} { return p.done }

// Signal sends sig to the program's process group (for a TTY, to the
// terminal's foreground process group).
func (p *Process) Signal(sig syscall.Signal) error {
	return p.send(control{Signal: int(sig)})
}

// Resize changes the terminal size of a TTY program.
func (p *Process) Resize(rows, cols uint16) error {
	return p.send(control{Resize: &winsize{Rows: rows, Cols: cols}})
}

func (p *Process) send(c control) error {
	select {
	case <-p.done:
		return errors.New("agent exec: process already finished")
	default:
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if err := writeFrame(p.ctl, c); err != nil {
		return fmt.Errorf("agent exec: %w", err)
	}
	return nil
}
