package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The host side of the agent protocol reads what a hostile guest sends.
// These fuzz targets feed it arbitrary bytes at each layer: the control
// frame decoder (readFrame), the yamux frame guard, the line handshake,
// and a whole session (handshake, then yamux, then a Ping). Properties:
// no panic, no hang, bounded memory and goroutines, and the documented
// bounds on what the host keeps.

// FuzzReadFrame: readFrame never allocates more than the limit it was
// given (plus the decoder's own work on what arrived), and a frame it
// accepts was at most that limit.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte("\x00\x00\x00\x02{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var a, b runtime.MemStats
		runtime.ReadMemStats(&a)
		var rep reply
		err := readFrame(bytes.NewReader(data), maxReplyFrame, &rep)
		runtime.ReadMemStats(&b)
		if n, max := b.TotalAlloc-a.TotalAlloc, uint64(maxReplyFrame+64<<10+32*len(data)); n > max {
			t.Fatalf("readFrame of %d bytes allocated %d, more than %d", len(data), n, max)
		}
		if err == nil {
			if len(data) < 4 || binary.BigEndian.Uint32(data) > maxReplyFrame {
				t.Fatalf("readFrame accepted a frame over the limit")
			}
		} else if len(data) >= 4 && binary.BigEndian.Uint32(data) > maxReplyFrame && !errors.Is(err, ErrFrameTooLarge) {
			t.Fatalf("oversized frame: %v, want ErrFrameTooLarge", err)
		}
	})
}

// guardVerdict is what the frame guard must decide about a byte stream,
// computed by a plain reading of the yamux frame layout: the offset of
// the first forbidden header (a stream the guest opens, a ping request),
// or -1.
func guardVerdict(b []byte) int {
	off := 0
	for len(b)-off >= yamuxHeaderSize {
		h := b[off : off+yamuxHeaderSize]
		typ, flags := h[1], binary.BigEndian.Uint16(h[2:4])
		length := binary.BigEndian.Uint32(h[8:12])
		if flags&yamuxFlagSYN != 0 && (typ == yamuxTypePing || typ == yamuxTypeData || typ == yamuxTypeWindow) {
			return off
		}
		off += yamuxHeaderSize
		if typ == yamuxTypeData {
			if int64(length) > int64(len(b)-off) {
				return -1
			}
			off += int(length)
		}
	}
	return -1
}

// chunkReader returns its data in reads of the sizes sizes gives.
type chunkReader struct {
	data  []byte
	sizes []byte
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := len(c.data)
	if len(c.sizes) > 0 {
		n = int(c.sizes[0]) + 1
		c.sizes = c.sizes[1:]
	}
	n = min(n, len(p), len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// FuzzFrameGuard: however the stream is cut into reads, the guard passes
// every byte before the first forbidden header unchanged, and refuses
// (ErrProtocol) exactly the streams that hold one.
func FuzzFrameGuard(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0}, []byte{3})
	f.Fuzz(func(t *testing.T, data, sizes []byte) {
		g := newFrameGuard(&chunkReader{data: data, sizes: sizes})
		var out bytes.Buffer
		buf := make([]byte, 64)
		var err error
		for {
			var n int
			n, err = g.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				break
			}
		}
		want := guardVerdict(data)
		if want < 0 {
			if err != io.EOF {
				t.Fatalf("guard refused a stream with no forbidden frame: %v", err)
			}
			if !bytes.Equal(out.Bytes(), data) {
				t.Fatalf("guard changed the bytes")
			}
			return
		}
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("guard passed a forbidden frame at %d: %v", want, err)
		}
		if out.Len() > want+yamuxHeaderSize+len(buf) || !bytes.Equal(out.Bytes(), data[:out.Len()]) {
			t.Fatalf("guard passed %d bytes (forbidden header at %d) or changed them", out.Len(), want)
		}
		if err2 := g.violation(); !errors.Is(err2, ErrProtocol) {
			t.Fatalf("violation not sticky: %v", err2)
		}
	})
}

const fuzzNonce = "00112233445566778899aabbccddeeff"

// scriptConn is a guest that sends r's bytes, then EOF, and takes
// everything the host writes.
type scriptConn struct {
	net.Conn
	r io.Reader
}

func (c *scriptConn) Read(p []byte) (int, error)      { return c.r.Read(p) }
func (c *scriptConn) Write(p []byte) (int, error)     { return len(p), nil }
func (c *scriptConn) SetDeadline(time.Time) error     { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error { return nil }
func (c *scriptConn) Close() error                    { return nil }

// FuzzHostHandshake: the guest answers with arbitrary bytes ("@N" stands
// for the host's nonce). The handshake ends (no hang), succeeds only when
// an OK and then a READY line for the nonce came, and keeps no more than
// what came after READY.
func FuzzHostHandshake(f *testing.F) {
	f.Add([]byte("\nBANGER-OK @N\n\nBANGER-READY @N\nyamux"))
	f.Fuzz(func(t *testing.T, data []byte) {
		data = bytes.ReplaceAll(data, []byte("@N"), []byte(fuzzNonce))
		host := &scriptConn{r: bytes.NewReader(data)}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rest, err := hostHandshakeNonce(ctx, host, fuzzNonce)
		if ctx.Err() != nil {
			t.Fatalf("handshake hung")
		}
		ok := []byte(okPrefix + fuzzNonce + "\n")
		ready := []byte(readyPrefix + fuzzNonce + "\n")
		i := bytes.Index(data, ok)
		j := -1
		if i >= 0 {
			j = bytes.Index(data[i+len(ok):], ready)
		}
		if err != nil {
			if j >= 0 {
				t.Fatalf("handshake failed although the guest answered: %v", err)
			}
			return
		}
		if j < 0 {
			t.Fatalf("handshake succeeded without OK and READY")
		}
		after := data[i+len(ok)+j+len(ready):]
		if !bytes.HasPrefix(after, rest) {
			t.Fatalf("rest %q is not what followed READY", rest)
		}
	})
}

// pingReply is a guest's well-formed answer to the host's first stream.
func pingReply(info string) []byte {
	body := []byte(`{"info":` + info + `}`)
	frame := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	frame = append(frame, body...)
	out := yamuxFrame(yamuxTypeWindow, 2 /* ACK */, 1, 0, nil)
	out = append(out, yamuxFrame(yamuxTypeData, 0, 1, uint32(len(frame)), frame)...)
	return append(out, yamuxFrame(yamuxTypeData, 4 /* FIN */, 1, 0, nil)...)
}

// FuzzSession: after a correct handshake the guest sends arbitrary bytes
// on the session (and closes it). The host's Ping ends without hanging,
// the Info it returns stays within its bounds, and closing the Client
// leaves no goroutine behind.
func FuzzSession(f *testing.F) {
	f.Add(pingReply(`{"version":"v1","hostname":"h"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		before := runtime.NumGoroutine()
		host, guest := net.Pipe()
		gdone := make(chan struct{})
		go func() {
			defer close(gdone)
			defer guest.Close()
			guest.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := guestHandshake(guest); err != nil {
				return
			}
			// Wait for the host's first frame (its SYN), then answer.
			var hdr [yamuxHeaderSize]byte
			if _, err := io.ReadFull(guest, hdr[:]); err != nil {
				return
			}
			go io.Copy(io.Discard, guest)
			guest.Write(data)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := Dial(ctx, host)
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		info, err := c.Ping(ctx)
		if ctx.Err() != nil {
			t.Fatalf("Ping hung")
		}
		if err == nil {
			for _, s := range []string{info.Version, info.Hostname, info.Kernel, info.BootID} {
				if len(s) > maxInfoString {
					t.Fatalf("Info string of %d bytes kept", len(s))
				}
			}
		}
		c.Close()
		<-gdone
		deadline := time.Now().Add(2 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			t.Fatalf("%d goroutines left after Close (%d before)", n, before)
		}
	})
}

// TestFuzzSessionSeedAnswers: the session seed is a real answer (the
// fuzz target starts from a Ping that works).
func TestFuzzSessionSeedAnswers(t *testing.T) {
	host, guest := net.Pipe()
	go func() {
		defer guest.Close()
		if _, err := guestHandshake(guest); err != nil {
			return
		}
		var hdr [yamuxHeaderSize]byte
		io.ReadFull(guest, hdr[:])
		go io.Copy(io.Discard, guest)
		guest.Write(pingReply(`{"version":"v1","hostname":"` + strings.Repeat("h", 1000) + `"}`))
		time.Sleep(time.Second)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	info, err := c.Ping(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != "v1" || len(info.Hostname) != maxInfoString {
		t.Fatalf("info %+v", info)
	}
}

// tarReply is a guest's well-formed answer to a GetTar on the host's
// first stream: a reply frame, chunks, the end chunk, a result frame.
func tarReply(chunks ...string) []byte {
	frame := func(s string) []byte { return append(binary.BigEndian.AppendUint32(nil, uint32(len(s))), s...) }
	body := frame(`{}`)
	for _, c := range chunks {
		body = append(body, frame(c)...)
	}
	body = append(body, 0, 0, 0, 0)
	body = append(body, frame(`{}`)...)
	out := yamuxFrame(yamuxTypeWindow, 2 /* ACK */, 1, 0, nil)
	out = append(out, yamuxFrame(yamuxTypeData, 0, 1, uint32(len(body)), body)...)
	return append(out, yamuxFrame(yamuxTypeData, 4 /* FIN */, 1, 0, nil)...)
}

// tallyWriter counts what is written to it.
type tallyWriter struct{ n int64 }

func (w *tallyWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// FuzzSessionGetTar: as FuzzSession, with a GetTar of limit 4096: the
// host never writes more than the limit, whatever the guest sends, and a
// guest error message it returns stays within 4096 bytes.
func FuzzSessionGetTar(f *testing.F) {
	f.Add(tarReply("hello", "world"))
	f.Fuzz(func(t *testing.T, data []byte) {
		before := runtime.NumGoroutine()
		host, guest := net.Pipe()
		gdone := make(chan struct{})
		go func() {
			defer close(gdone)
			defer guest.Close()
			guest.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := guestHandshake(guest); err != nil {
				return
			}
			var hdr [yamuxHeaderSize]byte
			if _, err := io.ReadFull(guest, hdr[:]); err != nil {
				return
			}
			go io.Copy(io.Discard, guest)
			guest.Write(data)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := Dial(ctx, host)
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		const limit = 4096
		var w tallyWriter
		err = c.GetTar(ctx, "/root/repo", &w, limit)
		if ctx.Err() != nil {
			t.Fatalf("GetTar hung")
		}
		if w.n > limit {
			t.Fatalf("GetTar wrote %d bytes, limit %d", w.n, limit)
		}
		var re *RemoteError
		if errors.As(err, &re) && len(re.Message) > 4096 {
			t.Fatalf("guest error of %d bytes kept", len(re.Message))
		}
		c.Close()
		<-gdone
		deadline := time.Now().Add(2 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			t.Fatalf("%d goroutines left after Close (%d before)", n, before)
		}
	})
}

// TestFuzzGetTarSeedAnswers: the GetTar seed is a real answer, and one
// chunk past the limit is cut at the limit.
func TestFuzzGetTarSeedAnswers(t *testing.T) {
	for _, tc := range []struct {
		chunks []string
		limit  int64
		want   int64
		over   bool
	}{{[]string{"hello", "world"}, 4096, 10, false}, {[]string{strings.Repeat("a", 3000), strings.Repeat("b", 3000)}, 4096, 4096, true}} {
		host, guest := net.Pipe()
		go func() {
			defer guest.Close()
			if _, err := guestHandshake(guest); err != nil {
				return
			}
			var hdr [yamuxHeaderSize]byte
			io.ReadFull(guest, hdr[:])
			go io.Copy(io.Discard, guest)
			guest.Write(tarReply(tc.chunks...))
			time.Sleep(time.Second)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := Dial(ctx, host)
		if err != nil {
			t.Fatal(err)
		}
		var w tallyWriter
		err = c.GetTar(ctx, "/x", &w, tc.limit)
		if tc.over != errors.Is(err, ErrLimitExceeded) || (!tc.over && err != nil) || w.n != tc.want {
			t.Errorf("chunks of %d: wrote %d, err %v", len(tc.chunks[0]), w.n, err)
		}
		c.Close()
		cancel()
	}
}
