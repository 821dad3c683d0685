package api

import (
	"encoding/binary"
	"fmt"
	"io"
)

// ExecRequest is the body of POST /v1/vms/{name}/exec. The request carries
// "Connection: Upgrade" and "Upgrade: banger-exec"; when the command has
// started the daemon answers 101 and both sides switch to frames. An error
// before that is an ordinary JSON error response.
type ExecRequest struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env,omitempty"`
	Dir  string   `json:"dir,omitempty"`
	TTY  bool     `json:"tty,omitempty"`
	Rows uint16   `json:"rows,omitempty"`
	Cols uint16   `json:"cols,omitempty"`
	// Stdin false means the command gets an empty stdin at once.
	Stdin bool `json:"stdin,omitempty"`
}

// ExecUpgrade is the Upgrade header's protocol name.
const ExecUpgrade = "banger-exec"

// Frame types. Client → daemon: stdin, stdin EOF, signal, resize.
// Daemon → client: stdout, stderr, exit (always the last frame).
const (
	FrameStdin    byte = 1
	FrameStdinEOF byte = 2
	FrameSignal   byte = 3 // payload: 1 byte signal number
	FrameResize   byte = 4 // payload: rows, cols as big-endian uint16
	FrameStdout   byte = 11
	FrameStderr   byte = 12
	FrameExit     byte = 13 // payload: JSON ExecExit
	// Runs only (POST /v1/runs): an Event (progress of the create, or a
	// notice), and the Run that ends the stream (after FrameExit, if the
	// command ran).
	FrameEvent  byte = 14
	FrameResult byte = 15
)

// MaxFrame bounds one frame's payload.
const MaxFrame = 1 << 20

// ExecExit ends an exec stream.
type ExecExit struct {
	Code   int    `json:"code"`             // exit code, or 128+signal
	Signal int    `json:"signal,omitempty"` // terminating signal, 0 if none
	Error  *Error `json:"error,omitempty"`  // banger failed mid-way
}

// WriteFrame writes one frame: type, 4-byte big-endian length, payload.
func WriteFrame(w io.Writer, typ byte, payload []byte) error {
	if len(payload) > MaxFrame {
		return fmt.Errorf("frame of %d bytes exceeds %d", len(payload), MaxFrame)
	}
	var hdr [5]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// ReadFrame reads one frame into buf (grown as needed, up to MaxFrame).
func ReadFrame(r io.Reader, buf []byte) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxFrame {
		return 0, nil, fmt.Errorf("frame of %d bytes exceeds %d", n, MaxFrame)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, nil, err
	}
	return hdr[0], buf, nil
}
