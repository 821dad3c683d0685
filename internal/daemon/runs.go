package daemon

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/progress"
	"github.com/banger-sh/banger/internal/run"
	"github.com/banger-sh/banger/internal/vm"
)

// runs is the daemon's run manager (see internal/run).
type runs = run.Manager

// runVMs adapts the VM manager to what a run needs.
type runVMs struct{ m *vm.Manager }

func (v runVMs) Create(ctx context.Context, req api.CreateVMRequest, p progress.Func) (api.VM, error) {
	return v.m.Create(ctx, req, p)
}

func (v runVMs) Exec(ctx context.Context, name string, req api.ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (run.Process, error) {
	p, err := v.m.Exec(ctx, name, req, stdin, stdout, stderr)
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (v runVMs) ExportPatch(ctx context.Context, name string, w io.Writer) error {
	return v.m.ExportPatch(ctx, name, w)
}

func (v runVMs) MarkExported(ctx context.Context, name, digest string) error {
	return v.m.MarkExported(ctx, name, digest)
}

func (v runVMs) Delete(ctx context.Context, name string, force bool) error {
	return v.m.Delete(ctx, name, vm.DeleteOptions{Force: force})
}

func (v runVMs) Get(ctx context.Context, name string) (api.VM, error) { return v.m.Get(ctx, name) }

func (d *Daemon) runRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/runs", d.handleRun)
	mux.HandleFunc("GET /v1/runs", func(w http.ResponseWriter, r *http.Request) {
		limit := 0
		if s := r.URL.Query().Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				writeError(w, r, errdefs.InvalidArgument(fmt.Sprintf("limit %q: want a number >= 0", s)))
				return
			}
			limit = n
		}
		list, err := d.runs.List(r.Context(), limit)
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, list)
	})
	mux.HandleFunc("GET /v1/runs/{id}", func(w http.ResponseWriter, r *http.Request) {
		v, err := d.runs.Get(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, v)
	})
	mux.HandleFunc("GET /v1/runs/{id}/patch", func(w http.ResponseWriter, r *http.Request) {
		f, err := d.runs.Patch(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, r, err)
			return
		}
		defer f.Close()
		st, _ := f.Stat()
		w.Header().Set("Content-Type", "text/x-diff")
		if st != nil {
			w.Header().Set("Content-Length", strconv.FormatInt(st.Size(), 10))
		}
		w.WriteHeader(200)
		io.Copy(w, f)
	})
	mux.HandleFunc("POST /v1/runs/{id}/outcome", func(w http.ResponseWriter, r *http.Request) {
		var req api.RunOutcomeRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, r, err)
			return
		}
		v, err := d.runs.SetOutcome(r.Context(), r.PathValue("id"), req.Outcome)
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, v)
	})
	mux.HandleFunc("DELETE /v1/runs/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := d.runs.Remove(r.Context(), r.PathValue("id")); err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, map[string]string{"deleted": r.PathValue("id")})
	})
}

// handleRun starts a run and streams it over an upgraded connection (the
// frames of exec, plus FrameEvent and FrameResult). The run belongs to the
// daemon: when the connection ends first, it goes on without it.
func (d *Daemon) handleRun(w http.ResponseWriter, r *http.Request) {
	var req api.RunRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), api.RunUpgrade) {
		writeError(w, r, errdefs.InvalidArgument("run needs 'Connection: Upgrade' and 'Upgrade: "+api.RunUpgrade+"'"))
		return
	}
	// Bad input is refused here, as an ordinary error before the upgrade:
	// no run record, no upload taken.
	if err := d.vms.CheckCreate(req.VM); err != nil {
		d.dropUpload(r.Context(), req.VM.Workspace)
		writeError(w, r, err)
		return
	}
	if err := vm.CheckExec(req.Exec); err != nil {
		d.dropUpload(r.Context(), req.VM.Workspace)
		writeError(w, r, err)
		return
	}
	if err := d.resolveWorkspace(r.Context(), req.VM.Workspace); err != nil {
		writeError(w, r, err)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		writeError(w, r, fmt.Errorf("run: hijack: %w", err))
		return
	}
	defer conn.Close()
	sink := &runSink{fw: &frameWriter{w: conn}, conn: conn}
	sink.fw.mu.Lock() // nothing before the 101 (or the error)
	l, err := d.runs.Start(req, sink)
	if err != nil {
		e := api.ToWire(err)
		b, _ := json.Marshal(e)
		fmt.Fprintf(conn, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
			api.HTTPStatus(e.Code), http.StatusText(api.HTTPStatus(e.Code)), len(b), b)
		sink.fw.mu.Unlock()
		return
	}
	fmt.Fprintf(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\nX-Banger-Run: %s\r\n\r\n", api.RunUpgrade, l.ID())
	sink.fw.mu.Unlock()
	d.log.Info("run started", "req", requestID(r.Context()), "run", l.ID(), "vm", req.VM.Name, "argv0", req.Exec.Argv[0])

	gone := make(chan struct{})
	go func() {
		defer close(gone)
		// Client → run: stdin, signals, window size. A client that goes
		// away is the run's to handle (hang up, or go on detached).
		rd := bufio.NewReader(io.MultiReader(brw.Reader, conn))
		buf := make([]byte, 0, 64<<10)
		for {
			typ, payload, err := api.ReadFrame(rd, buf)
			if err != nil {
				select {
				case <-l.Done():
				default:
					l.Detach()
				}
				return
			}
			switch typ {
			case api.FrameStdin:
				l.Stdin(payload)
			case api.FrameStdinEOF:
				l.StdinEOF()
			case api.FrameSignal:
				if len(payload) == 1 {
					l.Signal(syscall.Signal(payload[0]))
				}
			case api.FrameResize:
				if len(payload) == 4 {
					l.Resize(binary.BigEndian.Uint16(payload), binary.BigEndian.Uint16(payload[2:]))
				}
			}
		}
	}()
	select {
	case <-l.Done():
	case <-gone:
	}
}

// runSink writes a run's stream as frames; a client that does not read
// for a minute is dropped (the run goes on).
type runSink struct {
	fw   *frameWriter
	conn net.Conn
}

func (s *runSink) frame(typ byte, p []byte) error {
	s.conn.SetWriteDeadline(time.Now().Add(time.Minute))
	for len(p) > api.MaxFrame {
		if err := s.fw.write(typ, p[:api.MaxFrame]); err != nil {
			return err
		}
		p = p[api.MaxFrame:]
	}
	return s.fw.write(typ, p)
}

func (s *runSink) json(typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.frame(typ, b)
}

func (s *runSink) Event(ev api.Event) error  { return s.json(api.FrameEvent, ev) }
func (s *runSink) Stdout(p []byte) error     { return s.frame(api.FrameStdout, p) }
func (s *runSink) Stderr(p []byte) error     { return s.frame(api.FrameStderr, p) }
func (s *runSink) Exit(x api.ExecExit) error { return s.json(api.FrameExit, x) }
func (s *runSink) Result(r api.Run) error    { return s.json(api.FrameResult, r) }
