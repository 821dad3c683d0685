package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sync"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/errdefs"
)

// frames is an upgraded connection carrying banger's frames (exec and
// run streams): the client writes stdin, signals and window sizes; the
// daemon's frames are read by readLoop.
type frames struct {
	conn   io.ReadWriteCloser
	wmu    sync.Mutex
	done   chan struct{}
	closed sync.Once
}

// upgrade sends a JSON request that switches protocols, and returns the
// frame connection and the response (for its headers).
func (c *Client) upgrade(ctx context.Context, path, proto string, body any) (*frames, *http.Response, error) {
	b, _ := json.Marshal(body)
	hreq, err := http.NewRequestWithContext(ctx, "POST", "http://bangerd"+path, bytes.NewReader(b))
	if err != nil {
		return nil, nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Connection", "Upgrade")
	hreq.Header.Set("Upgrade", proto)
	resp, err := c.send(hreq)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body.Close()
		return nil, nil, errdefs.New(errdefs.ErrInternal, proto+": bangerd did not switch protocols: "+resp.Status)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, nil, errors.New(proto + ": upgraded body is not writable")
	}
	return &frames{conn: rwc, done: make(chan struct{})}, resp, nil
}

func (f *frames) send(typ byte, p []byte) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	return api.WriteFrame(f.conn, typ, p)
}

// stdinLoop sends r as stdin frames, then stdin EOF.
func (f *frames) stdinLoop(r io.Reader) {
	buf := make([]byte, 256<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if f.send(api.FrameStdin, buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			f.send(api.FrameStdinEOF, nil)
			return
		}
	}
}

// readLoop hands each frame from the daemon to handle until it says the
// stream is over (true) or the connection fails (lost is called), then
// closes done.
func (f *frames) readLoop(handle func(typ byte, p []byte) bool, lost func(error)) {
	defer close(f.done)
	rd := bufio.NewReaderSize(f.conn, 256<<10)
	buf := make([]byte, 0, 256<<10)
	for {
		typ, p, err := api.ReadFrame(rd, buf)
		if err != nil {
			lost(err)
			return
		}
		if handle(typ, p) {
			return
		}
	}
}

// Signal delivers a signal to the command.
func (f *frames) Signal(sig int) error { return f.send(api.FrameSignal, []byte{byte(sig)}) }

// Resize changes the command's terminal size.
func (f *frames) Resize(rows, cols uint16) error {
	var b [4]byte
	binary.BigEndian.PutUint16(b[:], rows)
	binary.BigEndian.PutUint16(b[2:], cols)
	return f.send(api.FrameResize, b[:])
}

// Done is closed when the stream has ended.
func (f *frames) Done() <-chan struct{} { return f.done }

// Close abandons the stream.
func (f *frames) Close() error {
	f.closed.Do(func() { f.conn.Close() })
	return nil
}
