package api

import (
	"errors"

	"github.com/banger-sh/banger/internal/errdefs"
)

// Wire error codes. This set is fixed: the CLI maps each to a hint and an
// exit code.
const (
	CodeNotFound        = "not_found"
	CodeAlreadyExists   = "already_exists"
	CodeInvalidArgument = "invalid_argument"
	CodeNotRunning      = "not_running"
	CodeConflict        = "conflict"
	CodeUnavailable     = "unavailable"
	CodeInternal        = "internal"
	// CodeMissingDependency: the host lacks a program banger runs (the
	// message names the Debian package).
	CodeMissingDependency = "missing_dependency"
)

// The error classes: every error a client returns matches one of these
// with errors.Is (the wire code turned back into its class).
var (
	ErrNotFound          = errdefs.ErrNotFound
	ErrAlreadyExists     = errdefs.ErrAlreadyExists
	ErrInvalidArgument   = errdefs.ErrInvalidArgument
	ErrNotRunning        = errdefs.ErrNotRunning
	ErrConflict          = errdefs.ErrConflict
	ErrUnavailable       = errdefs.ErrUnavailable
	ErrMissingDependency = errdefs.ErrMissingDependency
	ErrInternal          = errdefs.ErrInternal
	// ErrDaemonUnreachable: the client cannot reach bangerd (it is also
	// ErrUnavailable). It never crosses the wire.
	ErrDaemonUnreachable = errdefs.ErrDaemonUnreachable
)

// Error is the body of every failed response and of a stream's error event.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

var classes = []struct {
	code  string
	class error
}{
	{CodeNotFound, errdefs.ErrNotFound},
	{CodeAlreadyExists, errdefs.ErrAlreadyExists},
	{CodeInvalidArgument, errdefs.ErrInvalidArgument},
	{CodeNotRunning, errdefs.ErrNotRunning},
	{CodeConflict, errdefs.ErrConflict},
	{CodeUnavailable, errdefs.ErrUnavailable},
	{CodeMissingDependency, errdefs.ErrMissingDependency},
	{CodeInternal, errdefs.ErrInternal},
}

// Codes lists every wire error code.
func Codes() []string {
	out := make([]string, len(classes))
	for i, c := range classes {
		out[i] = c.code
	}
	return out
}

// ToWire converts any error to its wire form. This is the one place where
// error classes become codes.
func ToWire(err error) *Error {
	for _, c := range classes {
		if errors.Is(err, c.class) {
			return &Error{Code: c.code, Message: err.Error()}
		}
	}
	return &Error{Code: CodeInternal, Message: err.Error()}
}

// FromWire converts a wire error back into an error of the right class.
func FromWire(e *Error) error {
	for _, c := range classes {
		if e.Code == c.code {
			return errdefs.New(c.class, e.Message)
		}
	}
	return errdefs.New(errdefs.ErrInternal, e.Message)
}

// HTTPStatus is the status code a class of error is sent with.
func HTTPStatus(code string) int {
	switch code {
	case CodeNotFound:
		return 404
	case CodeAlreadyExists, CodeConflict:
		return 409
	case CodeInvalidArgument:
		return 400
	case CodeNotRunning:
		return 412
	case CodeUnavailable:
		return 503
	case CodeMissingDependency:
		return 424
	default:
		return 500
	}
}
