// Package paths owns every on-disk location banger uses. No other package
// joins directory names of its own: they ask a Layout.
//
// Resolution, first match wins:
//  1. BANGER_HOME=DIR puts everything under DIR (config/, state/, cache/,
//     run/). Tests and smoke runs use it so they never touch a user's state.
//  2. XDG: $XDG_CONFIG_HOME/banger, $XDG_STATE_HOME/banger,
//     $XDG_CACHE_HOME/banger, $XDG_RUNTIME_DIR/banger, each with the XDG
//     default when unset; root without XDG_RUNTIME_DIR uses /run/banger.
//
// The runtime directory holds the API socket and the daemon's pid lock:
// whoever controls it controls what `banger` talks to. Without
// XDG_RUNTIME_DIR it is the predictable /tmp/banger-UID, which another
// local user could create first and serve a fake daemon from (it would
// receive the repository, pick the --apply target, choose the ssh
// destination). So it must be a real directory (not a symbolic link),
// owned by the user, mode 0700: Ensure creates it so and refuses one that
// is not, and CheckRuntime (the client, before every connection, and the
// pid-lock reader) refuses to use one that is not.
package paths

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Layout is the set of banger's directories.
type Layout struct {
	Config  string // config.toml
	State   string // state.db, daemon log, per-VM disks
	Cache   string // images, downloads, templates
	Runtime string // sockets, pid/lock files
}

// FromEnv resolves the layout from the process environment.
func FromEnv() (Layout, error) {
	return Resolve(os.Getenv, os.Geteuid())
}

// Resolve is FromEnv with the environment and uid passed in (for tests).
func Resolve(getenv func(string) string, uid int) (Layout, error) {
	if h := getenv("BANGER_HOME"); h != "" {
		abs, err := filepath.Abs(h)
		if err != nil {
			return Layout{}, fmt.Errorf("BANGER_HOME: %w", err)
		}
		return Layout{
			Config:  filepath.Join(abs, "config"),
			State:   filepath.Join(abs, "state"),
			Cache:   filepath.Join(abs, "cache"),
			Runtime: filepath.Join(abs, "run"),
		}, nil
	}
	home := getenv("HOME")
	xdg := func(key, def string) (string, error) {
		if v := getenv(key); v != "" && filepath.IsAbs(v) {
			return filepath.Join(v, "banger"), nil
		}
		if home == "" {
			return "", fmt.Errorf("neither %s nor HOME is set", key)
		}
		return filepath.Join(home, def, "banger"), nil
	}
	var l Layout
	var err error
	if l.Config, err = xdg("XDG_CONFIG_HOME", ".config"); err != nil {
		return l, err
	}
	if l.State, err = xdg("XDG_STATE_HOME", filepath.Join(".local", "state")); err != nil {
		return l, err
	}
	if l.Cache, err = xdg("XDG_CACHE_HOME", ".cache"); err != nil {
		return l, err
	}
	switch r := getenv("XDG_RUNTIME_DIR"); {
	case r != "" && filepath.IsAbs(r):
		l.Runtime = filepath.Join(r, "banger")
	case uid == 0:
		l.Runtime = "/run/banger"
	default:
		l.Runtime = filepath.Join(os.TempDir(), fmt.Sprintf("banger-%d", uid))
	}
	return l, nil
}

// Ensure creates every directory of the layout; the runtime directory
// private (see the package doc), or an *UnsafeDirError.
func (l Layout) Ensure() error {
	for _, d := range []string{l.Config, l.State, l.Cache, l.VMsDir(), l.ImagesDir(), filepath.Dir(l.Runtime)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := os.Mkdir(l.Runtime, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return CheckPrivateDir(l.Runtime, os.Geteuid())
}

// CheckRuntime checks that the runtime directory, when it exists, is this
// user's own (see the package doc). A missing one is fine: nothing runs
// there yet.
func (l Layout) CheckRuntime() error {
	err := CheckPrivateDir(l.Runtime, os.Geteuid())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// UnsafeDirError says a directory that must be private is not.
type UnsafeDirError struct {
	Dir    string
	Reason string
}

func (e *UnsafeDirError) Error() string {
	return fmt.Sprintf("refusing to use %s: %s; another local user could serve a fake bangerd there (remove it, or set XDG_RUNTIME_DIR to a directory of yours)", e.Dir, e.Reason)
}

// CheckPrivateDir checks that dir is a directory (not a symbolic link)
// owned by uid with no permission for group or others. A missing dir is
// fs.ErrNotExist; any other failure an *UnsafeDirError.
func CheckPrivateDir(dir string, uid int) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return &UnsafeDirError{dir, "it is a symbolic link"}
	case !fi.IsDir():
		return &UnsafeDirError{dir, "it is not a directory"}
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return &UnsafeDirError{dir, "its owner is unknown"}
	}
	if int(st.Uid) != uid {
		return &UnsafeDirError{dir, fmt.Sprintf("it belongs to uid %d, not to uid %d", st.Uid, uid)}
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return &UnsafeDirError{dir, fmt.Sprintf("its mode is %04o, not 0700 (chmod 700 %s)", perm, dir)}
	}
	return nil
}

// ConfigFile is the user's configuration.
func (l Layout) ConfigFile() string { return filepath.Join(l.Config, "config.toml") }

// StoreFile is the SQLite database.
func (l Layout) StoreFile() string { return filepath.Join(l.State, "state.db") }

// DaemonLog is bangerd's structured log.
func (l Layout) DaemonLog() string { return filepath.Join(l.State, "bangerd.log") }

// DaemonLock is held (flock) by the running daemon; it holds its pid.
func (l Layout) DaemonLock() string { return filepath.Join(l.Runtime, "bangerd.lock") }

// Socket is the daemon's API socket.
func (l Layout) Socket() string { return filepath.Join(l.Runtime, "bangerd.sock") }

// VMsDir holds one directory per VM (disks, console log).
func (l Layout) VMsDir() string { return filepath.Join(l.State, "vms") }

// VMDir is one VM's persistent directory.
func (l Layout) VMDir(id string) string { return filepath.Join(l.VMsDir(), id) }

// VMRootStem is a VM's copy-on-write root disk without its extension,
// which is the disk format's (disk.Ext: the strategy that made it).
func (l Layout) VMRootStem(id string) string { return filepath.Join(l.VMDir(id), "root") }

// VMConsoleLog is a VM's serial console output.
func (l Layout) VMConsoleLog(id string) string { return filepath.Join(l.VMDir(id), "console.log") }

// VMVMMLog is the VMM process's own stdout/stderr.
func (l Layout) VMVMMLog(id string) string { return filepath.Join(l.VMDir(id), "vmm.log") }

// VMRuntimeDir holds a running VM's sockets. Kept short: unix socket paths
// are limited to 107 bytes.
func (l Layout) VMRuntimeDir(id string) string { return filepath.Join(l.Runtime, "vm", id) }

// ImagesDir holds one directory per registered image.
func (l Layout) ImagesDir() string { return filepath.Join(l.Cache, "images") }

// ImageDir is one image's directory (kernel, initrd parts, rootfs).
func (l Layout) ImageDir(name string) string { return filepath.Join(l.ImagesDir(), name) }

// BuildCacheDir holds downloads reused across image builds (debootstrap
// packages, kernel packages).
func (l Layout) BuildCacheDir() string { return filepath.Join(l.Cache, "build") }

// InitrdCacheDir holds initrds composed of an image's modules and this
// build's agent.
func (l Layout) InitrdCacheDir() string { return filepath.Join(l.Cache, "initrd") }

// SpoolDir holds patches being exported, on disk (the runtime dir may be
// RAM: /run is a tmpfs, and a patch may be 512 MiB).
func (l Layout) SpoolDir() string { return filepath.Join(l.State, "spool") }

// WorkDiskCacheDir keeps the CLI's last work disk of each work tree
// (internal/workspace's disk cache).
func (l Layout) WorkDiskCacheDir() string { return filepath.Join(l.Cache, "workdisks") }

// TmpDir is scratch space on the cache's filesystem (so renames are atomic).
func (l Layout) TmpDir() string { return filepath.Join(l.Cache, "tmp") }

// DaemonOutput receives bangerd's stdout/stderr when the CLI starts it
// (start-up failures that happen before logging is set up land here).
func (l Layout) DaemonOutput() string { return filepath.Join(l.State, "bangerd.out") }

// SSHKey is banger's own ssh private key (ed25519), installed in every
// guest's authorized_keys; SSHKey()+".pub" is its public half.
func (l Layout) SSHKey() string { return filepath.Join(l.State, "ssh", "id_ed25519") }

// VMKnownHosts is the known_hosts file for one VM (its own host key).
func (l Layout) VMKnownHosts(id string) string { return filepath.Join(l.VMDir(id), "known_hosts") }

// TemplatesDir holds the warm-start templates, one directory per key
// (internal/warm owns what is inside).
func (l Layout) TemplatesDir() string { return filepath.Join(l.Cache, "templates") }

// TemplateDir is one template's directory.
func (l Layout) TemplateDir(key string) string { return filepath.Join(l.TemplatesDir(), key) }

// TemplateRuntimeDir holds the sockets of a template VM while it is being
// built (short: unix socket paths are limited to 107 bytes).
func (l Layout) TemplateRuntimeDir(id string) string { return filepath.Join(l.Runtime, "tpl", id) }

// VMWorkDisk is a VM's work disk (the repository shipped at create).
func (l Layout) VMWorkDisk(id string) string { return filepath.Join(l.VMDir(id), "work.ext4") }

// UploadsDir holds the daemon's copies of files clients uploaded (work
// disks), on the state file system so that a VM takes one by rename.
func (l Layout) UploadsDir() string { return filepath.Join(l.State, "uploads") }

// RunDir holds what a run keeps after its VM is gone (the patch).
func (l Layout) RunDir(id string) string { return filepath.Join(l.State, "runs", id) }

// RunPatch is a run's exported workspace patch.
func (l Layout) RunPatch(id string) string { return filepath.Join(l.RunDir(id), "patch") }
