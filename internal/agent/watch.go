package agent

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Change tracking of work disks. A workspace export walks the whole tree
// to find what differs from the shipped manifest; under emulation that
// walk is most of the cost of exporting a workspace nothing touched
// (920 files: ~0.3-0.5 s on a freshly mounted disk, every inode read and
// instantiated for the first time). Right after mounting a work disk the
// agent puts a fanotify mark on its whole filesystem for every kind of
// change (write, truncate, attribute, create, delete, rename; a queue
// overflow counts as one); a scan of the mount that finds no event since
// then answers "nothing changed" without walking, exactly what the walk
// would have found. Any event makes the mount dirty for good: every later
// scan walks, as without tracking. So does a mount that is no longer the
// one marked (the agent holds the marked mount open, so that its mount id
// cannot be given to another: a different id at the path means it was
// detached and something mounted there), and a kernel without fanotify.
//
// One kind of event is let through: a change of an entry directly in the
// workspace's .git (but of its info directory and the manifest), such as
// the index a git status rewrites (index.lock, renamed to index). The walk
// reads nothing else there (the rules of .git/info, the manifest), so it
// would find what it found before. Telling those apart needs the kernel
// to name the directory and entry of each event (FAN_REPORT_DFID_NAME,
// Linux 5.9); without it every event counts.

// changeMask is every event that changes what a scan reports.
const changeMask = unix.FAN_MODIFY | unix.FAN_ATTRIB | unix.FAN_CLOSE_WRITE |
	unix.FAN_MOVED_FROM | unix.FAN_MOVED_TO | unix.FAN_CREATE | unix.FAN_DELETE |
	unix.FAN_DELETE_SELF | unix.FAN_MOVE_SELF | unix.FAN_ONDIR

type tracked struct {
	mu sync.Mutex
	fd int // the fanotify group
	// root is the marked mount's root, open: it pins the mount and its
	// mount id, and is open_by_handle_at's mount fd (an O_PATH one is not).
	root  int
	mntID uint64
	dirty bool
	// gitDir is the file handle of the workspace's .git when the mount
	// was marked ("" when it had none, or events name no directory):
	// events on its own entries (see ignorable) do not count.
	gitDir string
}

var (
	trackMu sync.Mutex
	tracks  = map[string]*tracked{} // mount path → its tracking
)

// trackChanges starts tracking the filesystem mounted at path. Without
// fanotify (or file handles) nothing is tracked and scans walk.
func trackChanges(path string) error {
	path = filepath.Clean(path)
	root, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	id, err := mountID(path)
	if err != nil {
		unix.Close(root)
		return err
	}
	const base = unix.FAN_CLASS_NOTIF | unix.FAN_REPORT_FID | unix.FAN_NONBLOCK | unix.FAN_CLOEXEC
	named := true
	fd, err := unix.FanotifyInit(base|unix.FAN_REPORT_DIR_FID|unix.FAN_REPORT_NAME, unix.O_RDONLY)
	if err != nil {
		named = false
		fd, err = unix.FanotifyInit(base, unix.O_RDONLY)
	}
	if err != nil {
		unix.Close(root)
		return err
	}
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, changeMask, unix.AT_FDCWD, path); err != nil {
		unix.Close(fd)
		unix.Close(root)
		return err
	}
	trackMu.Lock()
	if old := tracks[path]; old != nil {
		old.close()
	}
	tr := &tracked{fd: fd, root: root, mntID: id}
	if named {
		if h, _, err := unix.NameToHandleAt(root, ".git", 0); err == nil {
			tr.gitDir = handleKey(h.Type(), h.Bytes())
		}
	}
	tracks[path] = tr
	trackMu.Unlock()
	return nil
}

// unchangedSinceMount reports whether nothing under the tracked mount at
// dir has changed since it was mounted. false when dir is not tracked.
func unchangedSinceMount(dir string) bool {
	trackMu.Lock()
	t := tracks[filepath.Clean(dir)]
	trackMu.Unlock()
	if t == nil {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dirty || t.fd < 0 {
		return false
	}
	if id, err := mountID(dir); err != nil || id != t.mntID {
		t.dirty = true
		t.close()
		return false
	}
	buf := make([]byte, 8192)
	for {
		n, err := unix.Read(t.fd, buf)
		if n <= 0 && errors.Is(err, unix.EAGAIN) {
			return true // events read before were all ignorable
		}
		if n <= 0 || !t.allIgnorable(buf[:n]) {
			// An event that counts (or an error reading them): changed,
			// or unknown.
			t.dirty = true
			t.close()
			return false
		}
	}
}

// allIgnorable reports whether every event in b (whole events, as one
// read returns them) is ignorable.
func (t *tracked) allIgnorable(b []byte) bool {
	for len(b) > 0 {
		if len(b) < unix.FAN_EVENT_METADATA_LEN {
			return false
		}
		n := int(binary.NativeEndian.Uint32(b))
		meta := int(binary.NativeEndian.Uint16(b[6:]))
		if n < meta || meta < unix.FAN_EVENT_METADATA_LEN || n > len(b) || !t.ignorable(binary.NativeEndian.Uint64(b[8:]), b[meta:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// ignorable reports whether an event (its mask and info records) changed
// an entry directly in the workspace's .git other than info and the
// manifest, nothing the walk reads; or an inode removed (the old index a
// rename replaced) or moved: that change is also an event naming the
// directory it left. An inode with another link (which could be in the
// work tree) counts; so does making a link into .git (a link-count change
// of a live inode, an event that names no directory), whatever happens to
// it before the events are read (TestTrackChangesGitDir).
func (t *tracked) ignorable(mask uint64, info []byte) bool {
	if t.gitDir == "" || mask&unix.FAN_Q_OVERFLOW != 0 {
		return false
	}
	named := false
	var objects []unix.FileHandle
	for len(info) > 0 {
		// struct fanotify_event_info_fid: type, pad, len; fsid (8 bytes);
		// struct file_handle: handle_bytes, handle_type, f_handle; then,
		// for DFID_NAME, the entry's name, NUL-terminated.
		if len(info) < 4 {
			return false
		}
		typ, l := info[0], int(binary.NativeEndian.Uint16(info[2:]))
		if l < 20 || l > len(info) {
			return false
		}
		rec := info[4:l]
		info = info[l:]
		hb := int(binary.NativeEndian.Uint32(rec[8:]))
		if hb > len(rec)-16 {
			return false
		}
		htype, handle := int32(binary.NativeEndian.Uint32(rec[12:])), rec[16:16+hb]
		switch typ {
		case unix.FAN_EVENT_INFO_TYPE_DFID_NAME:
			name, _, _ := strings.Cut(string(rec[16+hb:]), "\x00")
			if handleKey(htype, handle) != t.gitDir || name == "" || name == "." || name == "info" || name == ManifestFile {
				return false
			}
			named = true
		case unix.FAN_EVENT_INFO_TYPE_FID:
			objects = append(objects, unix.NewFileHandle(htype, handle))
		default:
			return false
		}
	}
	if !named && mask&^(unix.FAN_MOVE_SELF|unix.FAN_DELETE_SELF|unix.FAN_ONDIR) == 0 {
		// An inode moved or removed: the same change is an event that
		// names the directory it left.
		return len(objects) > 0
	}
	for _, h := range objects {
		if !t.unlinked(h, named) {
			return false
		}
	}
	return named || len(objects) > 0
}

// unlinked reports whether the inode of a handle is gone, or has no link
// (or, when the event named a directory in .git, at most that one).
func (t *tracked) unlinked(h unix.FileHandle, named bool) bool {
	fd, err := unix.OpenByHandleAt(t.root, h, unix.O_PATH|unix.O_CLOEXEC)
	if errors.Is(err, unix.ESTALE) || errors.Is(err, unix.ENOENT) {
		return true
	}
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false
	}
	if named {
		return st.Nlink <= 1
	}
	return st.Nlink == 0
}

func handleKey(typ int32, b []byte) string {
	return strconv.Itoa(int(typ)) + ":" + string(b)
}

func (t *tracked) close() {
	if t.fd >= 0 {
		unix.Close(t.fd)
		unix.Close(t.root)
		t.fd, t.root = -1, -1
	}
}

func mountID(path string) (uint64, error) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &st); err != nil {
		return 0, err
	}
	if st.Mask&unix.STATX_MNT_ID == 0 {
		return 0, errors.New("statx: no mount id")
	}
	return st.Mnt_id, nil
}

// neverMounted reports whether the ext4 filesystem on dev has never been
// mounted (s_mnt_count 0). Any doubt is false.
func NeverMounted(dev string) bool {
	f, err := os.Open(dev)
	if err != nil {
		return false
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return false
	}
	return binary.LittleEndian.Uint16(sb[0x38:]) == 0xEF53 && binary.LittleEndian.Uint16(sb[0x34:]) == 0
}
