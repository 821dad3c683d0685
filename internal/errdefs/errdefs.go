// Package errdefs defines banger's error classes. Code anywhere wraps one
// of these with context (fmt.Errorf("start vm %s: %w", name, ErrNotRunning));
// the daemon converts a class to a wire code in exactly one place
// (internal/api), and the client converts it back, so errors.Is works on
// both sides of the socket.
package errdefs

import (
	"errors"
	"fmt"
)

var (
	ErrNotFound        = errors.New("not found")
	ErrAlreadyExists   = errors.New("already exists")
	ErrInvalidArgument = errors.New("invalid argument")
	ErrNotRunning      = errors.New("not running")
	ErrConflict        = errors.New("conflict")
	ErrUnavailable     = errors.New("unavailable")
	ErrInternal        = errors.New("internal error")
	// ErrMissingDependency: a program or package banger needs is not
	// installed on the host (the message names it and its package).
	ErrMissingDependency = errors.New("missing dependency")
	// ErrDaemonUnreachable: the CLI cannot reach or start bangerd, or lost
	// its connection mid-operation. It is a kind of ErrUnavailable (same
	// exit code), told apart only for the hint. It never crosses the wire.
	ErrDaemonUnreachable = fmt.Errorf("bangerd unreachable: %w", ErrUnavailable)
)

// classed is an error that carries a class but keeps its own message.
type classed struct {
	class error
	msg   string
}

func (c *classed) Error() string        { return c.msg }
func (c *classed) Is(target error) bool { return target == c.class }

// Unwrap lets a class that is a kind of another (ErrDaemonUnreachable of
// ErrUnavailable) match both.
func (c *classed) Unwrap() error { return c.class }

// New returns an error with message msg that matches class with errors.Is.
// It is how the client rebuilds a wire error without a doubled message.
func New(class error, msg string) error { return &classed{class: class, msg: msg} }

// NotFound etc. are shorthands for fmt.Errorf("...: %w", class) when the
// message should not repeat the class name.
func NotFound(msg string) error          { return New(ErrNotFound, msg) }
func AlreadyExists(msg string) error     { return New(ErrAlreadyExists, msg) }
func InvalidArgument(msg string) error   { return New(ErrInvalidArgument, msg) }
func NotRunning(msg string) error        { return New(ErrNotRunning, msg) }
func Conflict(msg string) error          { return New(ErrConflict, msg) }
func Unavailable(msg string) error       { return New(ErrUnavailable, msg) }
func DaemonUnreachable(msg string) error { return New(ErrDaemonUnreachable, msg) }
