package daemon

import (
	"context"
	"net/http"
)

// init prepares the daemon's services before the socket is served.
func (d *Daemon) init(ctx context.Context) error { return nil }

func (d *Daemon) backendName() string { return d.cfg.Backend }

func (d *Daemon) vmRoutes(mux *http.ServeMux) {}
