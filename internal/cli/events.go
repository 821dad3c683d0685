package cli

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"sync"
	"unicode/utf8"

	"github.com/banger-sh/banger/api"
)

// Event is one line of `vm run --json` and `vm exec --json`: NDJSON on
// stdout, in order. Type says which fields are set:
//
//	progress  progress            a phase of the VM's create
//	created   vm                  the VM is ready (vm run)
//	stdout    data | data_base64  a chunk of the command's output (base64
//	stderr    data | data_base64    when the chunk is not valid UTF-8)
//	exit      code, signal        the command ended (code 128+N for signal N)
//	exported  vm, patch           the workspace's edits are kept by bangerd (vm run)
//	deleted   vm                  the VM is gone (vm run --rm)
//	export    outcome             what was done with the edits (vm run REPO)
//	result    run                 the run's record (vm run); always last on success
//	error     error               banger failed ({code, message}); always last
//
// The process exits with the command's exit code (125: banger failed), as
// without --json. The schema is pinned by TestEventSchema.
type Event struct {
	Type       string        `json:"type"`
	Progress   *api.Progress `json:"progress,omitempty"`
	VM         string        `json:"vm,omitempty"`
	Data       string        `json:"data,omitempty"`
	DataBase64 string        `json:"data_base64,omitempty"`
	Code       *int          `json:"code,omitempty"`
	Signal     int           `json:"signal,omitempty"`
	Patch      *api.RunPatch `json:"patch,omitempty"`
	Outcome    string        `json:"outcome,omitempty"`
	Run        *api.Run      `json:"run,omitempty"`
	Error      *api.Error    `json:"error,omitempty"`
}

// eventWriter writes Events, one JSON object a line.
type eventWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (e *eventWriter) emit(ev Event) {
	b, _ := json.Marshal(ev)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.w.Write(append(b, '\n'))
}

// stream is a writer of the command's output as events of type typ.
func (e *eventWriter) stream(typ string) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		ev := Event{Type: typ}
		if utf8.Valid(p) {
			ev.Data = string(p)
		} else {
			ev.DataBase64 = base64.StdEncoding.EncodeToString(p)
		}
		e.emit(ev)
		return len(p), nil
	})
}

func (e *eventWriter) exit(code, signal int) {
	e.emit(Event{Type: "exit", Code: &code, Signal: signal})
}

func (e *eventWriter) fail(err error) {
	e.emit(Event{Type: "error", Error: api.ToWire(err)})
}
