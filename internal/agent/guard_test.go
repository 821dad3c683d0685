package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/hashicorp/yamux"
)

func yamuxFrame(typ uint8, flags uint16, id, length uint32, data []byte) []byte {
	b := make([]byte, yamuxHeaderSize, yamuxHeaderSize+len(data))
	b[1] = typ
	binary.BigEndian.PutUint16(b[2:4], flags)
	binary.BigEndian.PutUint32(b[4:8], id)
	binary.BigEndian.PutUint32(b[8:12], length)
	return append(b, data...)
}

// floodStats samples the process while a guest floods the host: the peak
// goroutine count and the peak memory in use (heap and goroutine stacks)
// above the baseline.
type floodStats struct {
	mu         sync.Mutex
	baseG      int
	baseHeap   uint64
	peakG      int
	peakHeap   uint64
	stop, done chan struct{}
}

func startFloodStats() *floodStats {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := &floodStats{baseG: runtime.NumGoroutine(), baseHeap: ms.HeapInuse + ms.StackInuse, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *floodStats) sample() {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	g := runtime.NumGoroutine()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.peakG = max(s.peakG, g)
	s.peakHeap = max(s.peakHeap, ms.HeapInuse+ms.StackInuse)
}

// end stops sampling and returns the peaks above the baseline
// (goroutines, MiB of heap and stacks in use).
func (s *floodStats) end(t *testing.T, what string) (int, float64) {
	close(s.stop)
	<-s.done
	s.sample()
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.peakG - s.baseG
	heap := float64(int64(s.peakHeap)-int64(s.baseHeap)) / (1 << 20)
	t.Logf("%s: peak +%d goroutines (base %d), peak +%.1f MiB in use (heap + stacks)", what, g, s.baseG, heap)
	return g, heap
}

// waitDone waits for the session to end.
func waitDone(c *Client, d time.Duration) bool {
	select {
	case <-c.Done():
		return true
	case <-time.After(d):
		return false
	}
}

// TestGuestPingFloodEndsSession: a guest that sends ping requests and
// never reads made yamux start one goroutine per ping in the host (issue
// 16, item 1). The host now ends the session at the first ping.
func TestGuestPingFloodEndsSession(t *testing.T) {
	hc, gc := socketPair(t)
	defer gc.Close()
	const pings = 50000
	flooded := make(chan int, 1)
	go func() {
		rest, err := guestHandshake(gc)
		if err != nil || len(rest) != 0 {
			flooded <- 0
			return
		}
		// One ping per Write, as a hostile agent would; never read.
		sent := 0
		for i := 0; i < pings; i++ {
			if _, err := gc.Write(yamuxFrame(yamuxTypePing, yamuxFlagSYN, 0, uint32(i), nil)); err != nil {
				break
			}
			sent++
		}
		flooded <- sent
	}()
	st := startFloodStats()
	c, err := Dial(tctx(t), hc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ended := waitDone(c, 10*time.Second)
	var sent int
	select {
	case sent = <-flooded:
	case <-time.After(20 * time.Second):
	}
	g, heap := st.end(t, "ping flood")
	t.Logf("guest sent %d of %d pings before the host hung up", sent, pings)
	if !ended {
		t.Errorf("the session survived a ping flood")
	}
	if !errors.Is(c.Err(), ErrProtocol) {
		t.Errorf("Err() = %v, want ErrProtocol", c.Err())
	}
	if _, err := c.Ping(tctx(t)); !errors.Is(err, ErrProtocol) {
		t.Errorf("ping after the flood: %v, want ErrProtocol", err)
	}
	if g > 100 || heap > 16 {
		t.Errorf("host grew by %d goroutines and %.1f MiB during the flood", g, heap)
	}
}

// TestGuestOpenedStreamEndsSession: streams the guest opens kept their
// data in host memory for the life of the session (issue 16, item 2:
// 200 streams, ~101 MiB). Any stream the guest opens now ends the session.
func TestGuestOpenedStreamEndsSession(t *testing.T) {
	hc, gc := socketPair(t)
	defer gc.Close()
	const streams = 200
	opened := make(chan int, 1)
	go func() {
		rest, err := guestHandshake(gc)
		if err != nil {
			opened <- 0
			return
		}
		sess, err := yamux.Server(&prefixRWC{ReadWriteCloser: gc, pre: rest}, yamuxConfig())
		if err != nil {
			opened <- 0
			return
		}
		// The session stays open (until the test closes gc): only the
		// host may end it.
		chunk := bytes.Repeat([]byte("x"), 256<<10) // one initial window
		n := 0
		for i := 0; i < streams; i++ {
			st, err := sess.OpenStream()
			if err != nil {
				break
			}
			st.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := st.Write(chunk); err != nil {
				break
			}
			n++
		}
		opened <- n
	}()
	st := startFloodStats()
	c, err := Dial(tctx(t), hc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ended := waitDone(c, 10*time.Second)
	var n int
	select {
	case n = <-opened:
	case <-time.After(60 * time.Second):
	}
	g, heap := st.end(t, "guest-opened streams")
	t.Logf("guest filled %d of %d streams", n, streams)
	if !ended {
		t.Errorf("the session survived %d streams opened by the guest", n)
	}
	if !errors.Is(c.Err(), ErrProtocol) {
		t.Errorf("Err() = %v, want ErrProtocol", c.Err())
	}
	if heap > 16 || g > 100 {
		t.Errorf("host grew by %d goroutines and %.1f MiB", g, heap)
	}
}

// TestFrameGuardPassesFramesAcrossReads: frames split at every byte still
// come through unchanged (data bodies are skipped, not parsed), and the
// violation is found when its header completes.
func TestFrameGuardPassesFramesAcrossReads(t *testing.T) {
	var in bytes.Buffer
	// A data body that looks like a ping request must not be taken for one.
	fake := yamuxFrame(yamuxTypePing, yamuxFlagSYN, 0, 7, nil)
	in.Write(yamuxFrame(yamuxTypeWindow, 2 /* ACK */, 1, 0, nil))
	in.Write(yamuxFrame(yamuxTypeData, 0, 1, uint32(len(fake)*3), bytes.Repeat(fake, 3)))
	in.Write(yamuxFrame(yamuxTypePing, 2 /* ACK */, 0, 1, nil))
	in.Write(yamuxFrame(yamuxTypeData, 4 /* FIN */, 1, 0, nil))
	legit := append([]byte(nil), in.Bytes()...)
	in.Write(yamuxFrame(yamuxTypeWindow, yamuxFlagSYN, 2, 0, nil))

	g := newFrameGuard(iotest.OneByteReader(&in))
	var out bytes.Buffer
	_, err := io.Copy(&out, g)
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("copy: %v, want ErrProtocol", err)
	}
	// Every byte before the offending header passed unchanged, and not
	// all of that header.
	got := out.Bytes()
	if len(got) < len(legit) || len(got) >= len(legit)+yamuxHeaderSize || !bytes.Equal(got[:len(legit)], legit) {
		t.Errorf("passed %d bytes, want the %d legitimate ones unchanged", len(got), len(legit))
	}
	if _, err := g.Read(make([]byte, 10)); !errors.Is(err, ErrProtocol) {
		t.Errorf("read after a violation: %v", err)
	}
}

var _ net.Conn = (*guardedConn)(nil)
