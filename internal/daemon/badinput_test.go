package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/banger-sh/banger/api"
)

// badInput is one invalid value of one API field.
type badInput struct {
	name         string
	method, path string
	body         string
	upgrade      string // Upgrade protocol (exec, runs)
	code         string // the API error code wanted
	field        string // the message names it (case-insensitive)
}

func createBody(field string) string { return `{"name":"newvm",` + field + `}` }

func runBody(vm, exec, extra string) string {
	if exec == "" {
		exec = `"argv":["true"]`
	}
	return `{"vm":{"name":"newvm"` + vm + `},"exec":{` + exec + `}` + extra + `}`
}

// apiBadInputs: every field of every request body, path value and query
// parameter, with invalid values (negative, huge, wrong type, path
// traversal, unicode, empty). Each must be refused before anything is
// made. "idle" is a stopped VM, "default" an image (hostileDaemon).
var apiBadInputs = func() []badInput {
	inv := api.CodeInvalidArgument
	var cs []badInput
	add := func(name, method, path, body, upgrade, code, field string) {
		cs = append(cs, badInput{name, method, path, body, upgrade, code, field})
	}
	// POST /v1/vms (CreateVMRequest).
	for _, v := range []string{`"Bad_Name"`, `"../etc"`, `"dév"`, `"` + strings.Repeat("a", 64) + `"`, `"-lead"`, `"a b"`, `"a\u0000b"`, `7`} {
		add("create name "+v, "POST", "/v1/vms", `{"name":`+v+`}`, "", inv, "name")
	}
	for _, v := range []string{`-1`, `65`, `1099511627776`, `"2"`, `1.5`, `99999999999999999999`} {
		add("create vcpus "+v, "POST", "/v1/vms", createBody(`"vcpus":`+v), "", inv, "vcpu")
	}
	for _, v := range []string{`-1`, `127`, `65537`, `1099511627776`, `"512"`} {
		add("create memory "+v, "POST", "/v1/vms", createBody(`"memory_mib":`+v), "", inv, "mem")
	}
	for _, v := range []string{`"-1G"`, `"0"`, `"abc"`, `"NaN"`, `"Inf"`, `"1e30G"`, `"4Q"`, `"../4G"`, `"４G"`, `4`} {
		add("create disk "+v, "POST", "/v1/vms", createBody(`"disk":`+v), "", inv, "disk")
	}
	for _, v := range []string{`"bogus"`, `"NAT "`, `"nät"`, `1`} {
		add("create net "+v, "POST", "/v1/vms", createBody(`"net":`+v), "", inv, "net")
	}
	for _, v := range []string{`"../../etc"`, `"/abs"`, `"bad name"`, `"imäge"`, `"` + strings.Repeat("i", 300) + `"`, `[]`} {
		add("create image "+v, "POST", "/v1/vms", createBody(`"image":`+v), "", inv, "image")
	}
	add("create workspace no upload", "POST", "/v1/vms", createBody(`"workspace":{}`), "", inv, "upload")
	add("create workspace bad upload", "POST", "/v1/vms", createBody(`"workspace":{"upload":"../../etc/shadow"}`), "", inv, "upload")
	add("create workspace disk smuggled", "POST", "/v1/vms", createBody(`"workspace":{"upload":"x","Disk":"/etc/shadow"}`), "", inv, "disk")
	add("create cold wrong type", "POST", "/v1/vms", createBody(`"cold":"yes"`), "", inv, "cold")
	add("create unknown field", "POST", "/v1/vms", createBody(`"vcpu":2`), "", inv, "vcpu")
	add("create empty body", "POST", "/v1/vms", ``, "", inv, "empty")
	add("create not an object", "POST", "/v1/vms", `[]`, "", inv, "malformed")
	add("create trailing data", "POST", "/v1/vms", `{} {}`, "", inv, "trailing")
	add("create huge body", "POST", "/v1/vms", `{"name":"`+strings.Repeat("a", api.MaxRequestBody)+`"}`, "", inv, "larger")

	// POST /v1/vms/{name}/stop (StopVMRequest).
	for _, v := range []string{`"abc"`, `"-1s"`, `"0s"`, `"1ms1"`, `30`, `"９s"`} {
		add("stop timeout "+v, "POST", "/v1/vms/idle/stop", `{"timeout":`+v+`}`, "", inv, "timeout")
	}
	add("stop force wrong type", "POST", "/v1/vms/idle/stop", `{"force":"yes"}`, "", inv, "force")

	// POST /v1/vms/{name}/set (SetVMRequest).
	for _, v := range []string{`-1`, `65`, `1099511627776`, `"2"`} {
		add("set vcpus "+v, "POST", "/v1/vms/idle/set", `{"vcpus":`+v+`}`, "", inv, "vcpu")
	}
	for _, v := range []string{`-1`, `127`, `65537`, `"1G"`} {
		add("set memory "+v, "POST", "/v1/vms/idle/set", `{"memory_mib":`+v+`}`, "", inv, "mem")
	}
	for _, v := range []string{`"bogus"`, `"nät"`, `true`} {
		add("set net "+v, "POST", "/v1/vms/idle/set", `{"net":`+v+`}`, "", inv, "net")
	}

	// POST /v1/vms/{name}/ports (ForwardRequest).
	for _, v := range []string{`""`, `"abc"`, `"99999:22"`, `"8080:0"`, `"-1:22"`, `"8080:22:33:44"`, `"a.b.c.d:8080:22"`, `"８０:22"`, `22`} {
		field := "port forward"
		if v == `22` {
			field = "spec"
		}
		add("ports spec "+v, "POST", "/v1/vms/idle/ports", `{"spec":`+v+`}`, "", inv, field)
	}

	// POST /v1/vms/{name}/workspace/exported (ExportedRequest).
	for _, v := range []string{`""`, `"zz"`, `"../../x"`, `"` + strings.Repeat("a", 63) + `"`, `"` + strings.Repeat("g", 64) + `"`, `1`} {
		add("exported sha256 "+v, "POST", "/v1/vms/idle/workspace/exported", `{"sha256":`+v+`}`, "", inv, "sha256")
	}

	// POST /v1/vms/{name}/exec (ExecRequest), with the upgrade.
	for _, c := range []struct{ label, body, field string }{
		{"argv empty", `{"argv":[]}`, "command"},
		{"argv missing", `{}`, "command"},
		{"argv0 empty", `{"argv":[""]}`, "argv"},
		{"argv NUL", `{"argv":["a\u0000b"]}`, "argv"},
		{"argv wrong type", `{"argv":"true"}`, "argv"},
		{"env no =", `{"argv":["true"],"env":["NOEQUALS"]}`, "env"},
		{"env empty key", `{"argv":["true"],"env":["=x"]}`, "env"},
		{"env NUL", `{"argv":["true"],"env":["A=\u0000"]}`, "env"},
		{"dir relative", `{"argv":["true"],"dir":"rel/dir"}`, "dir"},
		{"dir traversal", `{"argv":["true"],"dir":"../.."}`, "dir"},
		{"rows negative", `{"argv":["true"],"rows":-1}`, "rows"},
		{"cols huge", `{"argv":["true"],"cols":70000}`, "cols"},
	} {
		add("exec "+c.label, "POST", "/v1/vms/idle/exec", c.body, api.ExecUpgrade, inv, c.field)
	}

	// POST /v1/runs (RunRequest), with the upgrade.
	add("run vm name", "POST", "/v1/runs", `{"vm":{"name":"../x"},"exec":{"argv":["true"]}}`, api.RunUpgrade, inv, "name")
	add("run vm vcpus", "POST", "/v1/runs", runBody(`,"vcpus":-1`, "", ""), api.RunUpgrade, inv, "vcpu")
	add("run vm memory", "POST", "/v1/runs", runBody(`,"memory_mib":1`, "", ""), api.RunUpgrade, inv, "mem")
	add("run vm disk", "POST", "/v1/runs", runBody(`,"disk":"NaN"`, "", ""), api.RunUpgrade, inv, "disk")
	add("run vm net", "POST", "/v1/runs", runBody(`,"net":"bogus"`, "", ""), api.RunUpgrade, inv, "net")
	add("run vm image", "POST", "/v1/runs", runBody(`,"image":"../../x"`, "", ""), api.RunUpgrade, inv, "image")
	add("run exec argv empty", "POST", "/v1/runs", runBody("", `"argv":[]`, ""), api.RunUpgrade, inv, "command")
	add("run exec env", "POST", "/v1/runs", runBody("", `"argv":["true"],"env":["X"]`, ""), api.RunUpgrade, inv, "env")
	add("run exec dir", "POST", "/v1/runs", runBody("", `"argv":["true"],"dir":"rel"`, ""), api.RunUpgrade, inv, "dir")
	add("run timeout negative", "POST", "/v1/runs", runBody("", "", `,"timeout_seconds":-1`), api.RunUpgrade, inv, "timeout")
	add("run timeout huge", "POST", "/v1/runs", runBody("", "", `,"timeout_seconds":99999999999`), api.RunUpgrade, inv, "timeout")
	add("run keep wrong type", "POST", "/v1/runs", runBody("", "", `,"keep":1`), api.RunUpgrade, inv, "keep")

	// POST /v1/runs/{id}/outcome (RunOutcomeRequest).
	add("outcome on no run", "POST", "/v1/runs/nope/outcome", `{"outcome":"applied"}`, "", api.CodeNotFound, "nope")
	add("outcome wrong type", "POST", "/v1/runs/nope/outcome", `{"outcome":1}`, "", inv, "outcome")

	// POST /v1/images (BuildImageRequest): refused before any debootstrap.
	for _, v := range []string{`"bad name"`, `"../x"`, `"imäge"`, `"-x"`, `"` + strings.Repeat("n", 300) + `"`} {
		add("build name "+v, "POST", "/v1/images", `{"name":`+v+`}`, "", inv, "name")
	}
	for _, v := range []string{`"../../etc"`, `"/abs"`, `"bookworm;rm"`, `"bö"`, `"-v"`} {
		add("build suite "+v, "POST", "/v1/images", `{"name":"img","suite":`+v+`}`, "", inv, "suite")
	}
	for _, v := range []string{`["-oAPT::Get::AllowUnauthenticated=1"]`, `["a b"]`, `[""]`, `["pkg;rm"]`, `["päckage"]`, `"vim"`} {
		add("build packages "+v, "POST", "/v1/images", `{"name":"img","packages":`+v+`}`, "", inv, "package")
	}
	// (file: and ftp: mirrors are valid: an offline mirror.)
	for _, v := range []string{`"not a url"`, `"http://"`, `"-x"`, `"gopher://x/"`} {
		add("build mirror "+v, "POST", "/v1/images", `{"name":"img","mirror":`+v+`}`, "", inv, "mirror")
	}
	for _, v := range []string{`"-1G"`, `"NaN"`, `"abc"`, `"1e30G"`} {
		add("build size "+v, "POST", "/v1/images", `{"name":"img","size":`+v+`}`, "", inv, "size")
	}

	// POST /v1/images/import (ImportImageRequest).
	add("import name", "POST", "/v1/images/import", `{"name":"../x","kernel":"/k","rootfs":"/r"}`, "", inv, "name")
	add("import kernel missing", "POST", "/v1/images/import", `{"name":"imp","rootfs":"/r"}`, "", inv, "kernel")
	add("import kernel relative", "POST", "/v1/images/import", `{"name":"imp","kernel":"rel/vmlinuz","rootfs":"/r"}`, "", inv, "kernel")
	add("import kernel nonexistent", "POST", "/v1/images/import", `{"name":"imp","kernel":"/nonexistent/vmlinuz","rootfs":"/nonexistent/r"}`, "", inv, "kernel")
	add("import kernel a directory", "POST", "/v1/images/import", `{"name":"imp","kernel":"/etc","rootfs":"/etc"}`, "", inv, "kernel")
	add("import rootfs traversal", "POST", "/v1/images/import", `{"name":"imp","kernel":"/proc/self/exe","rootfs":"../../../etc/passwd"}`, "", inv, "rootfs")
	add("import initrd relative", "POST", "/v1/images/import", `{"name":"imp","kernel":"/proc/self/exe","rootfs":"/etc/passwd","initrd":"x"}`, "", inv, "initrd")

	// POST /v1/images/{name}/warm (WarmRequest).
	add("warm vcpus", "POST", "/v1/images/default/warm", `{"vcpus":-1}`, "", inv, "vcpu")
	add("warm memory", "POST", "/v1/images/default/warm", `{"memory_mib":99999999}`, "", inv, "mem")
	add("warm disk", "POST", "/v1/images/default/warm", `{"disk":"NaN"}`, "", inv, "disk")
	add("warm image traversal", "POST", "/v1/images/..%2F..%2Fetc/warm", `{}`, "", api.CodeNotFound, "../../etc")

	// Path values and query parameters.
	add("vm name traversal", "GET", "/v1/vms/..%2F..%2Fetc", ``, "", api.CodeNotFound, "../../etc")
	add("vm name unicode", "GET", "/v1/vms/d%C3%A9v", ``, "", api.CodeNotFound, "dév")
	add("vm name huge", "GET", "/v1/vms/"+strings.Repeat("a", 5000), ``, "", api.CodeNotFound, "aaaa")
	add("delete force not a bool", "DELETE", "/v1/vms/idle?force=maybe", ``, "", inv, "force")
	add("console follow not a bool", "GET", "/v1/vms/idle/console?follow=sometimes", ``, "", inv, "follow")
	add("runs limit negative", "GET", "/v1/runs?limit=-1", ``, "", inv, "limit")
	add("runs limit not a number", "GET", "/v1/runs?limit=ten", ``, "", inv, "limit")
	add("runs limit huge", "GET", "/v1/runs?limit=99999999999999999999", ``, "", inv, "limit")
	add("run id traversal", "GET", "/v1/runs/..%2F..%2Fetc", ``, "", api.CodeNotFound, "../../etc")
	add("run patch id traversal", "GET", "/v1/runs/..%2F..%2Fetc/patch", ``, "", api.CodeNotFound, "../../etc")
	add("image name traversal", "GET", "/v1/images/..%2F..%2Fetc", ``, "", api.CodeNotFound, "../../etc")
	add("image rm traversal", "DELETE", "/v1/images/..%2F..%2Fetc", ``, "", api.CodeNotFound, "../../etc")
	for _, q := range []string{"path=", "path=etc/passwd", "path=/etc/../etc/passwd", "path=/a%00b"} {
		add("file "+q, "GET", "/v1/vms/idle/file?"+q, ``, "", inv, "path")
		add("dir "+q, "GET", "/v1/vms/idle/dir?"+q, ``, "", inv, "path")
	}
	add("file path=/", "GET", "/v1/vms/idle/file?path=/", ``, "", inv, "path")
	for _, q := range []string{"max=-1", "max=0", "max=abc", "max=99999999999999999999"} {
		add("file "+q, "GET", "/v1/vms/idle/file?path=/etc/hostname&"+q, ``, "", inv, "max")
	}
	for _, q := range []string{"mode=999", "mode=-1", "mode=7777", "mode=rw"} {
		add("put file "+q, "PUT", "/v1/vms/idle/file?path=/tmp/x&"+q, `x`, "", inv, "mode")
	}
	add("put file path relative", "PUT", "/v1/vms/idle/file?path=tmp/x", `x`, "", inv, "path")
	for _, q := range []string{"path=rel", "path=/a/../b", "path=/"} {
		add("workspace "+q, "POST", "/v1/vms/idle/workspace?"+q, ``, "", inv, "path")
	}
	// POST /v1/vms/{name}/workspace/disk (WorkspaceSpec).
	add("workspace disk no upload", "POST", "/v1/vms/idle/workspace/disk", `{}`, "", inv, "upload")
	add("workspace disk bad upload", "POST", "/v1/vms/idle/workspace/disk", `{"upload":"../../etc/shadow"}`, "", inv, "upload")
	add("workspace disk smuggled", "POST", "/v1/vms/idle/workspace/disk", `{"upload":"x","Disk":"/etc/shadow"}`, "", inv, "disk")
	add("workspace disk upload type", "POST", "/v1/vms/idle/workspace/disk", `{"upload":7}`, "", inv, "upload")
	return cs
}()

// apiAnswer sends one request over the daemon's socket and returns the
// error it got (from the response or the stream's last event), or nil.
func apiAnswer(t *testing.T, hc *http.Client, c badInput) (*api.Error, string) {
	t.Helper()
	req, err := http.NewRequest(c.method, "http://banger"+c.path, strings.NewReader(c.body))
	if err != nil {
		t.Fatal(err)
	}
	if c.upgrade != "" {
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", c.upgrade)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, c.path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return nil, "101 Switching Protocols (the request was accepted)"
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 400 {
		var e api.Error
		if err := json.Unmarshal(data, &e); err != nil {
			return nil, fmt.Sprintf("status %d, not an API error: %q", resp.StatusCode, data)
		}
		return &e, ""
	}
	if resp.Header.Get("Content-Type") == "application/x-ndjson" {
		sc := bufio.NewScanner(bytes.NewReader(data))
		var last api.Event
		for sc.Scan() {
			last = api.Event{}
			json.Unmarshal(sc.Bytes(), &last)
		}
		if last.Error != nil {
			return last.Error, ""
		}
	}
	return nil, fmt.Sprintf("status %d, accepted: %.300s", resp.StatusCode, data)
}

// TestAPIBadInput: every invalid value of apiBadInputs gets the right
// error code and a message naming the field, through the real handlers on
// the daemon's unix socket, and leaves nothing behind (store rows, files
// under the daemon's dirs, links, child processes).
func TestAPIBadInput(t *testing.T) {
	c, l := hostileDaemon(t)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", l.Socket())
		},
	}}
	before := hostState(t, c, l)
	for _, bc := range apiBadInputs {
		t.Run(bc.name, func(t *testing.T) {
			e, why := apiAnswer(t, hc, bc)
			if e == nil {
				t.Fatalf("%s %s %s: want %s naming %q; got %s", bc.method, bc.path, bc.body, bc.code, bc.field, why)
			}
			if e.Code != bc.code || !strings.Contains(strings.ToLower(e.Message), strings.ToLower(bc.field)) {
				t.Errorf("%s %s %.200s: got %s %q, want %s naming %q", bc.method, bc.path, bc.body, e.Code, e.Message, bc.code, bc.field)
			}
			if got := stableState(t, c, l, before); got != before {
				t.Fatalf("left something behind:\nbefore:\n%s\nafter:\n%s", before, got)
			}
		})
	}
}

// TestRefusedRunDropsItsUpload: a run (or a workspace disk for a running
// VM) refused for bad input removes the work disk its request named at
// once (it used to stay in state/uploads until the upload's TTL).
func TestRefusedRunDropsItsUpload(t *testing.T) {
	c, l := hostileDaemon(t)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", l.Socket())
		},
	}}
	before := hostState(t, c, l)
	for _, bad := range []string{`,"vcpus":-1`, `,"net":"bogus"`, "path"} {
		f, err := os.CreateTemp(t.TempDir(), "disk")
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(1 << 20)
		up, err := c.Upload(context.Background(), f)
		f.Close()
		if err != nil || up.Token == "" {
			t.Fatalf("upload: %+v %v", up, err)
		}
		if got := hostState(t, c, l); got == before {
			t.Fatalf("the upload is not held by the daemon: the check below cannot fail")
		}
		req := badInput{method: "POST", path: "/v1/runs", upgrade: api.RunUpgrade,
			body: `{"vm":{"name":"newvm","workspace":{"upload":"` + up.Token + `"}` + bad + `},"exec":{"argv":["true"]}}`}
		if bad == "path" { // a workspace prepared into a VM
			req = badInput{method: "POST", path: "/v1/vms/idle/workspace/disk", body: `{"upload":"` + up.Token + `","path":"rel"}`}
		}
		e, why := apiAnswer(t, hc, req)
		if e == nil || e.Code != api.CodeInvalidArgument {
			t.Fatalf("run %s: %+v %s", bad, e, why)
		}
		if got := stableState(t, c, l, before); got != before {
			t.Fatalf("refused run %s left something behind:\nbefore:\n%s\nafter:\n%s", bad, before, got)
		}
	}
}
