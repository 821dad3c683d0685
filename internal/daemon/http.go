package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/version"
)

type ctxKey int

const reqIDKey ctxKey = 0

// RequestIDHeader carries the id the daemon gives every request; it is
// logged with everything the request does and returned to the client.
const RequestIDHeader = "X-Banger-Request-Id"

func (d *Daemon) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/version", d.handleVersion)
	mux.HandleFunc("GET /v1/health", d.handleHealth)
	mux.HandleFunc("POST /v1/daemon/stop", d.handleStop)
	d.vmRoutes(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, errdefs.NotFound(fmt.Sprintf("no API endpoint %s %s", r.Method, r.URL.Path)))
	})
	return d.middleware(mux)
}

// middleware gives each request an id, logs it, and turns a panic into an
// internal error instead of a dead daemon.
func (d *Daemon) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.reqMu.Lock()
		d.reqSeq++
		id := fmt.Sprintf("%x-%d", d.startedAt.Unix()&0xffffff, d.reqSeq)
		d.reqMu.Unlock()
		w.Header().Set(RequestIDHeader, id)
		r = r.WithContext(context.WithValue(r.Context(), reqIDKey, id))
		start := time.Now()
		lw := &loggingWriter{ResponseWriter: w, status: 200}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				d.log.Error("panic", "req", id, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				if !lw.wrote {
					writeError(lw, r, fmt.Errorf("daemon bug (request %s): %v: %w", id, p, errdefs.ErrInternal))
				}
			}
			d.log.Info("request", "req", id, "method", r.Method, "path", r.URL.Path, "status", lw.status, "dur", time.Since(start).String())
		}()
		next.ServeHTTP(lw, r)
	})
}

type loggingWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *loggingWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *loggingWriter) Write(p []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(p)
}

func (w *loggingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach Hijack on the real writer.
func (w *loggingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func requestID(ctx context.Context) string {
	s, _ := ctx.Value(reqIDKey).(string)
	return s
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := api.ToWire(err)
	writeJSON(w, api.HTTPStatus(e.Code), e)
}

// decodeBody reads a bounded JSON body into v; anything malformed, of the
// wrong type, with unknown fields or too large is invalid_argument.
func decodeBody(r *http.Request, v any) error {
	body := http.MaxBytesReader(nil, r.Body, api.MaxRequestBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errdefs.InvalidArgument(fmt.Sprintf("request body larger than %d bytes", api.MaxRequestBody))
		}
		if errors.Is(err, io.EOF) {
			return errdefs.InvalidArgument("empty request body")
		}
		return errdefs.InvalidArgument(fmt.Sprintf("malformed request: %v", err))
	}
	if dec.More() {
		return errdefs.InvalidArgument("malformed request: trailing data after JSON object")
	}
	return nil
}

// queryBool is a boolean query parameter: absent is false; a value that
// is not a boolean is invalid_argument (never silently false).
func queryBool(r *http.Request, key string) (bool, error) {
	s := r.URL.Query().Get(key)
	if s == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, errdefs.InvalidArgument(fmt.Sprintf("%s %q: want true or false", key, s))
	}
	return b, nil
}

// eventStream writes newline-delimited api.Events, flushing each.
type eventStream struct {
	w     http.ResponseWriter
	enc   *json.Encoder
	start time.Time
}

func newEventStream(w http.ResponseWriter) *eventStream {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	return &eventStream{w: w, enc: json.NewEncoder(w), start: time.Now()}
}

func (s *eventStream) send(ev api.Event) {
	s.enc.Encode(ev)
	http.NewResponseController(s.w).Flush()
}

// Progress sends a progress event, stamped with the time since the
// stream began; it is the progress.Func long operations report to.
func (s *eventStream) Progress(p api.Progress) {
	p.Elapsed = time.Since(s.start).Round(time.Millisecond).String()
	s.send(api.Event{Progress: &p})
}

func (s *eventStream) finish(result any, err error) {
	if err != nil {
		s.send(api.Event{Error: api.ToWire(err)})
		return
	}
	s.send(api.Event{Result: result})
}

func (d *Daemon) handleVersion(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, api.VersionInfo{
		Version: version.Version, Commit: version.Commit, APIVersion: version.APIVersion,
		GoVersion: runtime.Version(), PID: os.Getpid(),
	})
}

func (d *Daemon) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, api.Health{
		Status: "ok", StartedAt: d.startedAt.UTC(), Uptime: time.Since(d.startedAt).Round(time.Second).String(),
		Socket: d.layout.Socket(), StateDir: d.layout.State, Backend: d.backendName(),
	})
}

func (d *Daemon) handleStop(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, map[string]string{"status": "stopping"})
	d.stopOnce.Do(func() { close(d.stop) })
}
