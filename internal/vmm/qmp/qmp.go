// Package qmp is a small client for QEMU's machine protocol (QMP) over a
// unix socket: it reads the greeting, negotiates capabilities, and runs
// one command at a time, matching replies by id.
//
// Bounds: a single message is at most MaxMessage bytes; at most MaxEvents
// asynchronous events are queued (older ones are dropped); every call is
// bounded by its context, and by DefaultTimeout when the context has no
// deadline. After a timeout or a malformed message the client is broken
// (the stream may be mid-message): every later call fails and the caller
// should Close it and dial again.
//
// A QEMU socket monitor serves one client at a time: a second client
// connects but gets no greeting until the first one leaves. Callers should
// hold a Client only for the few commands they need.
package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

const (
	// MaxMessage bounds one QMP message (a JSON object on one line).
	MaxMessage = 1 << 20
	// MaxEvents bounds the queue of unread events.
	MaxEvents = 64
	// DefaultTimeout bounds a call whose context has no deadline.
	DefaultTimeout = 5 * time.Second
)

// ErrBroken is returned by calls on a client whose stream is no longer in
// a known state (an earlier call timed out or read garbage).
var ErrBroken = errors.New("qmp: connection broken by an earlier error")

// Error is an error reply from QEMU.
type Error struct {
	Command string
	Class   string
	Desc    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Version is QEMU's version from the greeting.
type Version struct {
	Major, Minor, Micro int
	Package             string
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// Event is an asynchronous notification (SHUTDOWN, STOP, RESUME, ...).
type Event struct {
	Name      string          `json:"event"`
	Data      json.RawMessage `json:"data,omitempty"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// Client is one QMP session. Its methods are safe for concurrent use;
// commands run one after another.
type Client struct {
	conn    net.Conn
	r       *bufio.Reader
	mu      sync.Mutex
	nextID  uint64
	broken  error
	events  []Event
	version Version
}

// Dial connects to the QMP socket at path, reads the greeting and leaves
// capabilities negotiation mode. ctx bounds the whole handshake.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
	}
	c, err := NewClient(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// NewClient runs the handshake on an open connection. On error the caller
// still owns conn.
func NewClient(ctx context.Context, conn net.Conn) (*Client, error) {
	c := &Client{conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}
	stop := c.bound(ctx)
	defer stop()
	line, err := c.readMessage()
	if err != nil {
		return nil, fmt.Errorf("qmp: read greeting: %w", c.ctxErr(ctx, err))
	}
	var g struct {
		QMP *struct {
			Version struct {
				QEMU struct {
					Major int `json:"major"`
					Minor int `json:"minor"`
					Micro int `json:"micro"`
				} `json:"qemu"`
				Package string `json:"package"`
			} `json:"version"`
		} `json:"QMP"`
	}
	if err := json.Unmarshal(line, &g); err != nil || g.QMP == nil {
		return nil, fmt.Errorf("qmp: not a QMP greeting: %.200q", line)
	}
	v := g.QMP.Version
	c.version = Version{Major: v.QEMU.Major, Minor: v.QEMU.Minor, Micro: v.QEMU.Micro, Package: v.Package}
	if err := c.execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		return nil, err
	}
	return c, nil
}

// Version reports the QEMU version announced in the greeting.
func (c *Client) Version() Version { return c.version }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Execute runs command with args (nil, or anything json.Marshal takes) and
// decodes the "return" value into result (nil to ignore it). An error reply
// is returned as *Error.
func (c *Client) Execute(ctx context.Context, command string, args, result any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return fmt.Errorf("qmp %s: %w", command, ErrBroken)
	}
	stop := c.bound(ctx)
	defer stop()
	return c.execute(ctx, command, args, result)
}

// Events returns and clears the queued events.
func (c *Client) Events() []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	ev := c.events
	c.events = nil
	return ev
}

// bound makes conn I/O fail when ctx ends or, without a deadline, after
// DefaultTimeout. The returned func undoes it.
func (c *Client) bound(ctx context.Context) func() {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(DefaultTimeout)
	}
	_ = c.conn.SetDeadline(dl)
	stopAfter := context.AfterFunc(ctx, func() {
		_ = c.conn.SetDeadline(time.Unix(1, 0))
	})
	return func() {
		stopAfter()
		_ = c.conn.SetDeadline(time.Time{})
	}
}

// ctxErr attributes an I/O error caused by bound to the context.
func (c *Client) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	if dl, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(dl) {
		return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	}
	return err
}

type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        uint64 `json:"id"`
}

type reply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event *string          `json:"event"`
	ID    *json.RawMessage `json:"id"`
}

func (c *Client) execute(ctx context.Context, command string, args, result any) error {
	c.nextID++
	id := c.nextID
	msg, err := json.Marshal(request{Execute: command, Arguments: args, ID: id})
	if err != nil {
		return fmt.Errorf("qmp %s: encode arguments: %w", command, err)
	}
	msg = append(msg, '\n')
	if _, err := c.conn.Write(msg); err != nil {
		c.broken = err
		return fmt.Errorf("qmp %s: write: %w", command, c.ctxErr(ctx, err))
	}
	want := fmt.Sprint(id)
	for {
		line, err := c.readMessage()
		if err != nil {
			c.broken = err
			return fmt.Errorf("qmp %s: read: %w", command, c.ctxErr(ctx, err))
		}
		var r reply
		if err := json.Unmarshal(line, &r); err != nil {
			c.broken = err
			return fmt.Errorf("qmp %s: bad message %.200q: %w", command, line, err)
		}
		if r.Event != nil {
			var ev Event
			if json.Unmarshal(line, &ev) == nil {
				if len(c.events) >= MaxEvents {
					c.events = c.events[1:]
				}
				c.events = append(c.events, ev)
			}
			continue
		}
		if r.ID == nil || string(bytes.TrimSpace(*r.ID)) != want {
			// A reply to a command whose caller gave up; not ours.
			continue
		}
		if r.Error != nil {
			return &Error{Command: command, Class: r.Error.Class, Desc: r.Error.Desc}
		}
		if result != nil && len(r.Return) > 0 {
			if err := json.Unmarshal(r.Return, result); err != nil {
				return fmt.Errorf("qmp %s: decode return value: %w", command, err)
			}
		}
		return nil
	}
}

// readMessage reads one newline-terminated message of at most MaxMessage
// bytes, skipping blank lines.
func (c *Client) readMessage() ([]byte, error) {
	for {
		var buf []byte
		for {
			chunk, err := c.r.ReadSlice('\n')
			if len(buf)+len(chunk) > MaxMessage {
				return nil, fmt.Errorf("qmp: message longer than %d bytes", MaxMessage)
			}
			buf = append(buf, chunk...)
			if err == nil {
				break
			}
			if errors.Is(err, bufio.ErrBufferFull) {
				continue
			}
			if errors.Is(err, io.EOF) && len(buf) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if line := bytes.TrimSpace(buf); len(line) > 0 {
			return line, nil
		}
	}
}

// Status is the answer to query-status.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // "running", "paused", "inmigrate", "shutdown", ...
}

// QueryStatus runs query-status.
func (c *Client) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}
