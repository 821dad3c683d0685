package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/errdefs"
)

// Uploads are how a client hands the root daemon a file it made (a work
// disk): as an open file descriptor passed over the API socket
// (SCM_RIGHTS), which the daemon keeps open and reads when the VM takes
// the disk (one copy: into the VM's disk or a spare's slot). The daemon
// never opens, renames or reads a path a client names, so no client can
// make it touch a file the client could not itself read. A token names the
// descriptor in the next create, run or workspace request of the same user
// (SO_PEERCRED) for uploadTTL; what the client does to its file meanwhile
// is its own VM's business.
const (
	uploadTTL      = 10 * time.Minute
	maxUploadBytes = 1 << 40 // apparent size; only the data is copied
	// maxUploadsPerUser bounds the descriptors one user can have the
	// daemon hold (a create or run takes two).
	maxUploadsPerUser = 64
)

type uploads struct {
	dir string
	mu  sync.Mutex
	m   map[string]*upload
}

type upload struct {
	f       *os.File
	uid     int
	expires time.Time
}

func newUploads(dir string) *uploads {
	u := &uploads{dir: dir, m: map[string]*upload{}}
	// Copies an older daemon made (it copied uploads into dir) are of no
	// use: their tokens died with it.
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

// receive reads one byte with one descriptor and keeps the file open.
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
	kept := false
	defer func() {
		if !kept {
			f.Close()
		}
	}()
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
	u.mu.Lock()
	u.sweepLocked()
	if n := u.countLocked(uid); n >= maxUploadsPerUser {
		u.mu.Unlock()
		return "", 0, errdefs.InvalidArgument(fmt.Sprintf("upload: %d uploads of this user not used yet (at most %d)", n, maxUploadsPerUser))
	}
	u.m[tok] = &upload{f: f, uid: uid, expires: time.Now().Add(uploadTTL)}
	u.mu.Unlock()
	kept = true
	return tok, st.Size(), nil
}

func (u *uploads) countLocked(uid int) int {
	n := 0
	for _, up := range u.m {
		if up.uid == uid {
			n++
		}
	}
	return n
}

// take hands the upload named by token to its user's request (once): the
// descriptor, for the caller to read and close.
func (u *uploads) take(token string, uid int) (*os.File, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.sweepLocked()
	up, ok := u.m[token]
	if !ok || up.uid != uid {
		return nil, errdefs.InvalidArgument(fmt.Sprintf("upload %q: no such upload of this user (expired, used, or never made)", token))
	}
	delete(u.m, token)
	return up.f, nil
}

func (u *uploads) sweepLocked() {
	now := time.Now()
	for tok, up := range u.m {
		if now.After(up.expires) {
			up.f.Close()
			delete(u.m, tok)
		}
	}
}

// Close closes what was uploaded and never used.
func (u *uploads) Close(context.Context) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	for tok, up := range u.m {
		up.f.Close()
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
		if f, err := d.uploads.take(ws.Upload, p.uid); err == nil {
			f.Close()
		}
		if ws.Pack != "" {
			if f, err := d.uploads.take(ws.Pack, p.uid); err == nil {
				f.Close()
			}
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
	f, err := d.uploads.take(ws.Upload, p.uid)
	if err != nil {
		return err
	}
	ws.Disk = f
	if ws.Pack != "" { // the base's objects (HostExport); optional
		if ws.PackFile, err = d.uploads.take(ws.Pack, p.uid); err != nil {
			f.Close()
			ws.Disk = nil
			return err
		}
	}
	return nil
}

// closeUploads closes a resolved workspace's descriptors.
func closeUploads(ws *api.WorkspaceSpec) {
	if ws.Disk != nil {
		ws.Disk.Close()
	}
	if ws.PackFile != nil {
		ws.PackFile.Close()
	}
}
