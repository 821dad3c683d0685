package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/errdefs"
)

// requestTypes are the JSON bodies the daemon's handlers decode (every
// decodeBody call site), in a fixed order: a fuzz input picks one.
var requestTypes = []func() any{
	func() any { return new(api.CreateVMRequest) },
	func() any { return new(api.StopVMRequest) },
	func() any { return new(api.SetVMRequest) },
	func() any { return new(api.ForwardRequest) },
	func() any { return new(api.ExportedRequest) },
	func() any { return new(api.ExecRequest) },
	func() any { return new(api.RunRequest) },
	func() any { return new(api.RunOutcomeRequest) },
	func() any { return new(api.BuildImageRequest) },
	func() any { return new(api.ImportImageRequest) },
	func() any { return new(api.WarmRequest) },
}

// FuzzDecodeBody: decodeBody refuses anything but one JSON object of the
// request's type with invalid_argument (never a panic, never another
// class), and what it accepts survives a round trip through the encoder.
func FuzzDecodeBody(f *testing.F) {
	f.Add(uint8(0), []byte(`{"name":"dev","vcpus":2}`))
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		newV := requestTypes[int(kind)%len(requestTypes)]
		v := newV()
		r := httptest.NewRequest("POST", "/v1/x", bytes.NewReader(body))
		err := decodeBody(r, v)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("decode error of class %s: %v", api.ToWire(err).Code, err)
			}
			if len(err.Error()) > 4096 {
				t.Fatalf("error message of %d bytes", len(err.Error()))
			}
			return
		}
		if len(body) > api.MaxRequestBody {
			t.Fatalf("accepted a body of %d bytes", len(body))
		}
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		v2 := newV()
		if err := decodeBody(httptest.NewRequest("POST", "/v1/x", bytes.NewReader(b)), v2); err != nil {
			t.Fatalf("the re-encoded body is refused: %v\n%s", err, b)
		}
		b2, _ := json.Marshal(v2)
		if !bytes.Equal(b, b2) {
			t.Fatalf("round trip changed the request:\n%s\n%s", b, b2)
		}
	})
}

// fuzzRoutes are the API routes FuzzAPI sends requests to ({name} is
// the fuzzed name). Left out: those that would build or import an image,
// boot a VM for a template, or stop the daemon (the bad-input table
// covers their fields), and the upgrade routes' streams (exec and run
// refuse a request without the upgrade before anything else; with it,
// the agent fuzzers cover what the guest sends).
var fuzzRoutes = []struct{ method, path string }{
	{"POST", "/v1/vms"},
	{"GET", "/v1/vms/{name}"},
	{"DELETE", "/v1/vms/{name}"},
	{"POST", "/v1/vms/{name}/stop"},
	{"POST", "/v1/vms/{name}/start"},
	{"POST", "/v1/vms/{name}/set"},
	{"GET", "/v1/vms/{name}/console"},
	{"POST", "/v1/vms/{name}/workspace"},
	{"GET", "/v1/vms/{name}/workspace/export"},
	{"POST", "/v1/vms/{name}/workspace/exported"},
	{"POST", "/v1/vms/{name}/ssh"},
	{"POST", "/v1/vms/{name}/ports"},
	{"POST", "/v1/vms/{name}/exec"},
	{"GET", "/v1/vms/{name}/file"},
	{"PUT", "/v1/vms/{name}/file"},
	{"GET", "/v1/vms/{name}/dir"},
	{"POST", "/v1/runs"},
	{"GET", "/v1/runs"},
	{"GET", "/v1/runs/{name}"},
	{"GET", "/v1/runs/{name}/patch"},
	{"POST", "/v1/runs/{name}/outcome"},
	{"DELETE", "/v1/runs/{name}"},
	{"GET", "/v1/images"},
	{"GET", "/v1/images/{name}"},
	{"DELETE", "/v1/images/{name}"},
	{"GET", "/v1/version"},
	{"GET", "/v1/health"},
	{"PATCH", "/v1/vms"},
}

// knownCodes are the API's error codes.
var knownCodes = map[string]bool{api.CodeNotFound: true, api.CodeAlreadyExists: true, api.CodeInvalidArgument: true, api.CodeNotRunning: true, api.CodeConflict: true, api.CodeUnavailable: true, api.CodeMissingDependency: true}

// FuzzAPI sends requests with a fuzzed name, query and body to the real
// handlers of an in-process daemon (real store on a temporary
// BANGER_HOME, on its unix socket). Properties: no internal error (a
// daemon bug) or dead daemon; every error is {code, message} with a known
// code; a streamed answer ends with a result or an error; and nothing is
// left behind: the store's rows, the files under the daemon's dirs, links
// and child processes are as before.
func FuzzAPI(f *testing.F) {
	c, l := hostileDaemon(f)
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", l.Socket())
		},
	}}
	before := hostState(f, c, l)
	f.Add(uint8(0), "idle", "", []byte(`{"name":"dev"}`))
	f.Fuzz(func(t *testing.T, route uint8, name, query string, body []byte) {
		rt := fuzzRoutes[int(route)%len(fuzzRoutes)]
		u := "http://banger" + strings.ReplaceAll(rt.path, "{name}", url.PathEscape(name))
		if query != "" {
			u += "?" + query
		}
		req, err := http.NewRequest(rt.method, u, bytes.NewReader(body))
		if err != nil || strings.ContainsAny(query, " \t\r\n\x00\x7f") {
			return // not a request line a client can send (net/http refuses it before any handler)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", rt.method, u, err)
		}
		data, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s %s: read: %v", rt.method, u, err)
		}
		checkAnswer(t, rt.method+" "+u, resp, data)
		if resp.StatusCode < 300 && resp.Header.Get("Content-Type") != "application/x-ndjson" && rt.method != "GET" {
			// A request that did what it asked (delete the stopped VM, or
			// the image): the new state is the baseline.
			before = hostState(t, c, l)
			return
		}
		if got := stableState(t, c, l, before); got != before {
			t.Fatalf("%s %s (body %q) left something behind:\nbefore:\n%s\nafter:\n%s", rt.method, u, body, before, got)
		}
	})
}

func checkAnswer(t *testing.T, what string, resp *http.Response, data []byte) {
	t.Helper()
	if resp.StatusCode >= 500 && resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("%s: status %d: %s", what, resp.StatusCode, data)
	}
	if resp.StatusCode >= 400 {
		var e api.Error
		if err := json.Unmarshal(data, &e); err != nil || !knownCodes[e.Code] || e.Message == "" {
			t.Fatalf("%s: status %d, not an API error: %s", what, resp.StatusCode, data)
		}
		return
	}
	if resp.Header.Get("Content-Type") == "application/x-ndjson" {
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, 1<<20)
		var last api.Event
		for sc.Scan() {
			last = api.Event{}
			if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
				t.Fatalf("%s: bad event line %q", what, sc.Bytes())
			}
		}
		if last.Error == nil && last.Result == nil {
			t.Fatalf("%s: stream ended without result or error: %s", what, data)
		}
		if last.Error != nil && (last.Error.Code == api.CodeInternal || !knownCodes[last.Error.Code]) {
			t.Fatalf("%s: stream error %+v", what, last.Error)
		}
	}
}
