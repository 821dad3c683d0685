package daemon

import (
	"fmt"
	"io/fs"
	"net/http"
	"strconv"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/vm"
)

// fileRoutes serve single files of a running VM (for programs: the MCP
// server and the SDK).
func (d *Daemon) fileRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/vms/{name}/file", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var max int64
		if s := q.Get("max"); s != "" {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n <= 0 {
				writeError(w, r, errdefs.InvalidArgument(fmt.Sprintf("max %q: want a positive number of bytes", s)))
				return
			}
			max = n
		}
		fc, err := d.vms.ReadFile(r.Context(), r.PathValue("name"), q.Get("path"), max)
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, fc)
	})
	mux.HandleFunc("PUT /v1/vms/{name}/file", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		mode := fs.FileMode(0o644)
		if s := q.Get("mode"); s != "" {
			n, err := strconv.ParseUint(s, 8, 32)
			if err != nil || n > 0o777 {
				writeError(w, r, errdefs.InvalidArgument(fmt.Sprintf("mode %q: want octal permission bits, e.g. 644", s)))
				return
			}
			mode = fs.FileMode(n)
		}
		if r.ContentLength < 0 {
			writeError(w, r, errdefs.InvalidArgument("write: Content-Length is required"))
			return
		}
		if r.ContentLength > vm.MaxFileWrite {
			writeError(w, r, errdefs.InvalidArgument(fmt.Sprintf("write: %d bytes: at most %d", r.ContentLength, vm.MaxFileWrite)))
			return
		}
		p := q.Get("path")
		if err := d.vms.WriteFile(r.Context(), r.PathValue("name"), p, r.Body, r.ContentLength, mode); err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, map[string]any{"written": p, "bytes": r.ContentLength})
	})
	mux.HandleFunc("GET /v1/vms/{name}/dir", func(w http.ResponseWriter, r *http.Request) {
		l, err := d.vms.ListDir(r.Context(), r.PathValue("name"), r.URL.Query().Get("path"))
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, 200, l)
	})
}
