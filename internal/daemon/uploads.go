package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/errdefs"
)

// Uploads are how a client hands the root daemon a file it made (a work
// disk): as an open file descriptor passed over the API socket
// (SCM_RIGHTS), whose data the daemon copies into a file of its own. The
// daemon never opens, renames or reads a path a client names, so no client
// can make it touch a file the client could not itself read. A token names
// the copy in the next create or run request of the same user (SO_PEERCRED)
// for uploadTTL.
const (
	uploadTTL      = 10 * time.Minute
	maxUploadBytes = 1 << 40 // apparent size; only the data is copied
)

type uploads struct {
	dir string
	mu  sync.Mutex
	m   map[string]*upload
}

type upload struct {
	path    string
	uid     int
	expires time.Time
}

func newUploads(dir string) *uploads {
	u := &uploads{dir: dir, m: map[string]*upload{}}
	// What a crashed daemon received is of no use: its tokens died with it.
	if old, _ := filepath.Glob(filepath.Join(dir, "upload-*")); len(old) > 0 {
		for _, p := range old {
			os.Remove(p)
		}
	}
	return u
}

// peerKey carries the API connection's peer credentials in a request's
// context (http.Server.ConnContext).
type peerKey struct{}

type peer struct {
	uid, pid int
	ok       bool
}

func connContext(ctx context.Context, c net.Conn) context.Context {
	var p peer
	if cr, err := peerCred(c); err == nil {
		p = peer{uid: int(cr.Uid), pid: int(cr.Pid), ok: true}
	}
	return context.WithValue(ctx, peerKey{}, p)
}

func peerOf(ctx context.Context) peer {
	p, _ := ctx.Value(peerKey{}).(peer)
	return p
}

// handleUpload receives one file descriptor after the 101 and answers with
// one line of JSON (api.Upload).
func (d *Daemon) handleUpload(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), api.UploadUpgrade) {
		writeError(w, r, errdefs.InvalidArgument("upload needs 'Connection: Upgrade' and 'Upgrade: "+api.UploadUpgrade+"'"))
		return
	}
	p := peerOf(r.Context())
	if !p.ok {
		writeError(w, r, errdefs.InvalidArgument("upload: the peer's credentials are unknown (not a unix socket?)"))
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		writeError(w, r, fmt.Errorf("upload: hijack: %w", err))
		return
	}
	defer conn.Close()
	uc, ok := conn.(*net.UnixConn)
	if !ok || brw.Reader.Buffered() > 0 {
		// Bytes read ahead would have lost their descriptor.
		fmt.Fprintf(conn, "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
		return
	}
	fmt.Fprintf(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n", api.UploadUpgrade)
	res := api.Upload{}
	tok, size, err := d.uploads.receive(uc, p.uid)
	if err != nil {
		res.Error = api.ToWire(err)
		d.log.Warn("upload refused", "req", requestID(r.Context()), "uid", p.uid, "err", err)
	} else {
		res.Token, res.Bytes = tok, size
	}
	b, _ := json.Marshal(res)
	uc.Write(append(b, '\n'))
}

// receive reads one byte with one descriptor and copies the file's data.
func (u *uploads) receive(uc *net.UnixConn, uid int) (string, int64, error) {
	uc.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4*4)) // room for a few: extra ones are closed
	_, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return "", 0, errdefs.InvalidArgument(fmt.Sprintf("upload: no file descriptor received: %v", err))
	}
	var fds []int
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			if rights, err := unix.ParseUnixRights(&m); err == nil {
				fds = append(fds, rights...)
			}
		}
	}
	for _, fd := range fds[min(1, len(fds)):] {
		unix.Close(fd)
	}
	if len(fds) == 0 {
		return "", 0, errdefs.InvalidArgument("upload: no file descriptor received")
	}
	f := os.NewFile(uintptr(fds[0]), "upload")
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	if !st.Mode().IsRegular() {
		return "", 0, errdefs.InvalidArgument(fmt.Sprintf("upload: not a regular file (%s)", st.Mode().Type()))
	}
	if st.Size() <= 0 || st.Size() > maxUploadBytes {
		return "", 0, errdefs.InvalidArgument(fmt.Sprintf("upload: size %d bytes is out of range", st.Size()))
	}
	// The descriptor may be open for reading only: that is all we need.
	if fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0); err == nil && fl&unix.O_ACCMODE == unix.O_WRONLY {
		return "", 0, errdefs.InvalidArgument("upload: the descriptor is not open for reading")
	}
	tok := newToken()
	if err := os.MkdirAll(u.dir, 0o700); err != nil {
		return "", 0, err
	}
	dst := filepath.Join(u.dir, "upload-"+tok)
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", 0, err
	}
	err = out.Truncate(st.Size())
	if err == nil {
		err = disk.CopyData(f, out, st.Size())
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		if errors.Is(err, syscall.ENOSPC) {
			return "", 0, fmt.Errorf("upload: %s is full: %w", u.dir, err)
		}
		return "", 0, fmt.Errorf("upload: %w", err)
	}
	u.mu.Lock()
	u.sweepLocked()
	u.m[tok] = &upload{path: dst, uid: uid, expires: time.Now().Add(uploadTTL)}
	u.mu.Unlock()
	return tok, st.Size(), nil
}

// take hands the upload named by token to its user's request (once): the
// daemon's own file, for the caller to move or remove.
func (u *uploads) take(token string, uid int) (string, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.sweepLocked()
	up, ok := u.m[token]
	if !ok || up.uid != uid {
		return "", errdefs.InvalidArgument(fmt.Sprintf("upload %q: no such upload of this user (expired, used, or never made)", token))
	}
	delete(u.m, token)
	return up.path, nil
}

func (u *uploads) sweepLocked() {
	now := time.Now()
	for tok, up := range u.m {
		if now.After(up.expires) {
			os.Remove(up.path)
			delete(u.m, tok)
		}
	}
}

// Close removes what was uploaded and never used.
func (u *uploads) Close(context.Context) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	for tok, up := range u.m {
		os.Remove(up.path)
		delete(u.m, tok)
	}
	return nil
}

func newToken() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// resolveWorkspace turns a request's upload token into the daemon's own
// work disk (same user only).
// dropUpload removes the upload a refused request named: nothing of it is
// left behind (rather than waiting for its UploadTTL).
func (d *Daemon) dropUpload(ctx context.Context, ws *api.WorkspaceSpec) {
	if ws == nil || ws.Upload == "" {
		return
	}
	if p := peerOf(ctx); p.ok {
		if path, err := d.uploads.take(ws.Upload, p.uid); err == nil {
			os.Remove(path)
		}
	}
}

func (d *Daemon) resolveWorkspace(ctx context.Context, ws *api.WorkspaceSpec) error {
	if ws == nil {
		return nil
	}
	if ws.Upload == "" {
		return errdefs.InvalidArgument("workspace: no upload token (upload the work disk first: POST /v1/uploads)")
	}
	p := peerOf(ctx)
	if !p.ok {
		return errdefs.InvalidArgument("workspace: the peer's credentials are unknown")
	}
	path, err := d.uploads.take(ws.Upload, p.uid)
	if err != nil {
		return err
	}
	ws.Disk = path
	if ws.Pack != "" { // the base's objects (HostExport); optional
		if ws.PackFile, err = d.uploads.take(ws.Pack, p.uid); err != nil {
			os.Remove(path)
			ws.Disk = ""
			return err
		}
	}
	return nil
}
