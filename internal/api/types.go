// Package api holds the request and response types of bangerd's HTTP+JSON
// API (served on a unix socket under /v1/) and its error codes.
//
// Long operations (image build, vm create) answer with a stream of
// newline-delimited JSON Events: zero or more progress events, then exactly
// one result or error event. Exec upgrades the connection to a framed
// stdin/stdout/stderr stream (see exec.go).
package api

import "time"

// MaxRequestBody bounds every JSON request body the daemon reads.
const MaxRequestBody = 1 << 20

// VersionInfo answers GET /v1/version.
type VersionInfo struct {
	Version    string `json:"version"`
	Commit     string `json:"commit"`
	APIVersion string `json:"api_version"`
	GoVersion  string `json:"go_version"`
	PID        int    `json:"pid"`
}

// Health answers GET /v1/health.
type Health struct {
	Status    string    `json:"status"` // "ok"
	StartedAt time.Time `json:"started_at"`
	Uptime    string    `json:"uptime"`
	Socket    string    `json:"socket"`
	StateDir  string    `json:"state_dir"`
	Backend   string    `json:"backend"`
}

// Event is one line of a streamed response.
type Event struct {
	Progress *Progress `json:"progress,omitempty"`
	Result   any       `json:"result,omitempty"`
	Error    *Error    `json:"error,omitempty"`
}

// Progress reports a phase of a long operation.
type Progress struct {
	Phase   string `json:"phase"`
	Detail  string `json:"detail,omitempty"`
	Elapsed string `json:"elapsed,omitempty"`
}
