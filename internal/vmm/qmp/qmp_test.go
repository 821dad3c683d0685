package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const greeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2"}, "capabilities": ["oob"]}}`

// fakeQEMU serves one connection on a unix socket with handler, which gets
// each decoded request and writes whatever it likes.
func fakeQEMU(t *testing.T, handler func(w *bufio.Writer, req map[string]any)) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bgq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		w := bufio.NewWriter(conn)
		fmt.Fprintf(w, "%s\r\n", greeting)
		w.Flush()
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			var req map[string]any
			if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
				return
			}
			if req["execute"] == "qmp_capabilities" {
				fmt.Fprintf(w, `{"return": {}, "id": %v}`+"\r\n", req["id"])
			} else {
				handler(w, req)
			}
			w.Flush()
		}
	}()
	return sock
}

func TestExecute(t *testing.T) {
	sock := fakeQEMU(t, func(w *bufio.Writer, req map[string]any) {
		id := req["id"]
		switch req["execute"] {
		case "query-status":
			// An event and a stale reply come first; both must be skipped.
			fmt.Fprintf(w, `{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}`+"\r\n")
			fmt.Fprintf(w, `{"return": {"status": "stale"}, "id": 999}`+"\r\n\r\n")
			fmt.Fprintf(w, `{"return": {"status": "running", "singlestep": false, "running": true}, "id": %v}`+"\r\n", id)
		case "echo":
			args, _ := json.Marshal(req["arguments"])
			fmt.Fprintf(w, `{"return": %s, "id": %v}`+"\r\n", args, id)
		default:
			fmt.Fprintf(w, `{"error": {"class": "CommandNotFound", "desc": "The command %s has not been found"}, "id": %v}`+"\r\n", req["execute"], id)
		}
	})
	ctx := context.Background()
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if v := c.Version(); v.String() != "7.2.22" || v.Package != "Debian 1:7.2" {
		t.Errorf("version %+v", v)
	}
	st, err := c.QueryStatus(ctx)
	if err != nil || st != (Status{Running: true, Status: "running"}) {
		t.Errorf("QueryStatus = %+v, %v", st, err)
	}
	ev := c.Events()
	if len(ev) != 1 || ev[0].Name != "STOP" || ev[0].Timestamp.Seconds != 1 {
		t.Errorf("events %+v", ev)
	}
	if len(c.Events()) != 0 {
		t.Error("Events did not clear the queue")
	}
	var out map[string]string
	if err := c.Execute(ctx, "echo", map[string]string{"a": "b"}, &out); err != nil || out["a"] != "b" {
		t.Errorf("echo: %v %v", out, err)
	}
	err = c.Execute(ctx, "nope", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Command != "nope" {
		t.Errorf("error reply: %v", err)
	}
	// An error reply does not break the session.
	if _, err := c.QueryStatus(ctx); err != nil {
		t.Errorf("after error reply: %v", err)
	}
}

func TestTimeoutBreaksClient(t *testing.T) {
	sock := fakeQEMU(t, func(w *bufio.Writer, req map[string]any) {}) // never answers
	c, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = c.Execute(ctx, "query-status", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("timeout took %v", d)
	}
	if err := c.Execute(context.Background(), "query-status", nil, nil); !errors.Is(err, ErrBroken) {
		t.Errorf("after timeout: %v, want ErrBroken", err)
	}
}

func TestCancelUnblocks(t *testing.T) {
	sock := fakeQEMU(t, func(w *bufio.Writer, req map[string]any) {})
	c, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want canceled", err)
	}
}

func TestOversizedMessage(t *testing.T) {
	sock := fakeQEMU(t, func(w *bufio.Writer, req map[string]any) {
		fmt.Fprintf(w, `{"return": "%s", "id": %v}`+"\r\n", strings.Repeat("x", MaxMessage+10), req["id"])
	})
	c, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Execute(context.Background(), "big", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("got %v", err)
	}
}

func TestEventQueueBounded(t *testing.T) {
	sock := fakeQEMU(t, func(w *bufio.Writer, req map[string]any) {
		for i := 0; i < MaxEvents+10; i++ {
			fmt.Fprintf(w, `{"event": "E%d", "timestamp": {"seconds": %d, "microseconds": 0}}`+"\r\n", i, i)
		}
		fmt.Fprintf(w, `{"return": {}, "id": %v}`+"\r\n", req["id"])
	})
	c, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Execute(context.Background(), "x", nil, nil); err != nil {
		t.Fatal(err)
	}
	ev := c.Events()
	if len(ev) != MaxEvents || ev[len(ev)-1].Name != fmt.Sprintf("E%d", MaxEvents+9) {
		t.Errorf("%d events, last %+v", len(ev), ev[len(ev)-1])
	}
}

func TestNotQMP(t *testing.T) {
	dir, err := os.MkdirTemp("", "bgq")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		conn, err := l.Accept()
		if err == nil {
			fmt.Fprintf(conn, "hello, I am not QEMU\n")
			time.Sleep(time.Second)
			conn.Close()
		}
	}()
	if _, err := Dial(context.Background(), sock); err == nil || !strings.Contains(err.Error(), "not a QMP greeting") {
		t.Errorf("got %v", err)
	}
	// No greeting at all (a monitor busy with another client): bounded.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	l2, err := net.Listen("unix", sock+"2")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if _, err := Dial(ctx, sock+"2"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("silent server: %v", err)
	}
	if _, err := Dial(context.Background(), filepath.Join(dir, "missing")); err == nil {
		t.Error("dial of a missing socket succeeded")
	}
}
