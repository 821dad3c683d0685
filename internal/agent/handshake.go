package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

const (
	helloPrefix = "BANGER-HELLO "
	okPrefix    = "BANGER-OK "
	startPrefix = "BANGER-START "
	readyPrefix = "BANGER-READY "

	// maxHandshakeScan bounds how many bytes the host discards while
	// looking for the guest's answer (stale output of an old session).
	maxHandshakeScan = 64 << 20
	// maxGuestLine bounds one handshake line the guest keeps.
	maxGuestLine = 256
)

func newNonce() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

func validNonce(s string) bool {
	if len(s) != 32 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// hostHandshake runs the host side of the handshake on conn and returns
// the bytes read past the guest's READY line (the start of yamux).
func hostHandshake(ctx context.Context, conn net.Conn) ([]byte, error) {
	nonce, err := newNonce()
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := watchCtx(ctx, conn)
	rest, err := hostHandshakeNonce(ctx, conn, nonce)
	stop()
	conn.SetDeadline(time.Time{})
	return rest, err
}

func hostHandshakeNonce(ctx context.Context, conn net.Conn, nonce string) ([]byte, error) {

	// Resend HELLO until the guest answers: a guest still in an old yamux
	// session drops the first one while it fails and resets.
	var mu sync.Mutex
	stopped := false
	resendDone := make(chan struct{})
	wake := make(chan struct{})
	go func() {
		defer close(resendDone)
		delay := 200 * time.Millisecond
		for {
			mu.Lock()
			if stopped {
				mu.Unlock()
				return
			}
			_, err := io.WriteString(conn, "\n"+helloPrefix+nonce+"\n")
			mu.Unlock()
			if err != nil {
				return
			}
			select {
			case <-wake:
				return
			case <-time.After(delay):
			}
			if delay < 2*time.Second {
				delay *= 2
			}
		}
	}()
	stopResend := func() {
		mu.Lock()
		if !stopped {
			stopped = true
			close(wake)
		}
		mu.Unlock()
		<-resendDone
	}
	defer stopResend()

	sc := &scanner{r: conn, max: maxHandshakeScan}
	if err := sc.find([]byte(okPrefix + nonce + "\n")); err != nil {
		return nil, handshakeErr(ctx, err)
	}
	stopResend()
	if _, err := io.WriteString(conn, "\n"+startPrefix+nonce+"\n"); err != nil {
		return nil, handshakeErr(ctx, err)
	}
	if err := sc.find([]byte(readyPrefix + nonce + "\n")); err != nil {
		return nil, handshakeErr(ctx, err)
	}
	return sc.rest(), nil
}

func handshakeErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	return fmt.Errorf("agent handshake: %w", err)
}

// scanner reads from r until it has seen a token, discarding what comes
// before it, and keeps what came after.
type scanner struct {
	r    io.Reader
	max  int64
	read int64
	buf  []byte
}

func (s *scanner) find(tok []byte) error {
	chunk := make([]byte, 32<<10)
	for {
		if i := bytes.Index(s.buf, tok); i >= 0 {
			s.buf = s.buf[i+len(tok):]
			return nil
		}
		// Keep only what could be the start of the token.
		if keep := len(tok) - 1; len(s.buf) > keep {
			s.buf = append(s.buf[:0], s.buf[len(s.buf)-keep:]...)
		}
		if s.read >= s.max {
			return fmt.Errorf("no answer from the guest in the first %d bytes", s.max)
		}
		n, err := s.r.Read(chunk)
		s.read += int64(n)
		s.buf = append(s.buf, chunk[:n]...)
		if err != nil && n == 0 {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("connection closed before the guest answered: %w", io.ErrUnexpectedEOF)
			}
			return err
		}
	}
}

func (s *scanner) rest() []byte { return s.buf }

// guestHandshake runs the guest side: it answers every HELLO and returns
// when it sees the START for the last nonce it answered, with the bytes
// read past that line.
func guestHandshake(rw io.ReadWriter) ([]byte, error) {
	var (
		cur   string
		line  []byte
		long  bool // discarding the rest of an over-long line
		chunk = make([]byte, 4096)
	)
	for {
		n, err := rw.Read(chunk)
		data := chunk[:n]
		for len(data) > 0 {
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				if !long {
					line = append(line, data...)
					if len(line) > maxGuestLine {
						line, long = line[:0], true
					}
				}
				break
			}
			if !long {
				line = append(line, data[:i]...)
			}
			data = data[i+1:]
			l := string(line)
			line, long = line[:0], false
			if len(l) > maxGuestLine {
				continue
			}
			switch {
			case strings.HasPrefix(l, helloPrefix):
				nonce := strings.TrimPrefix(l, helloPrefix)
				if !validNonce(nonce) {
					continue
				}
				cur = nonce
				if _, err := io.WriteString(rw, "\n"+okPrefix+nonce+"\n"); err != nil {
					return nil, err
				}
			case strings.HasPrefix(l, startPrefix) && cur != "" && strings.TrimPrefix(l, startPrefix) == cur:
				if _, err := io.WriteString(rw, "\n"+readyPrefix+cur+"\n"); err != nil {
					return nil, err
				}
				return append([]byte(nil), data...), nil
			}
		}
		if err != nil {
			return nil, err
		}
	}
}

// watchCtx closes nothing but makes blocked I/O on conn return when ctx
// is done. The returned stop must be called.
func watchCtx(ctx context.Context, conn interface{ SetDeadline(time.Time) error }) (stop func()) {
	if ctx.Done() == nil {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		select {
		case <-ctx.Done():
			conn.SetDeadline(time.Unix(1, 0))
		case <-done:
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}

// prefixConn is a net.Conn whose first reads return pre-read bytes.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// prefixRWC is prefixConn for a plain io.ReadWriteCloser.
type prefixRWC struct {
	io.ReadWriteCloser
	pre []byte
}

func (c *prefixRWC) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.ReadWriteCloser.Read(p)
}
