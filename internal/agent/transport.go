package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// FindVirtioPort returns the /dev node of the virtio-serial port called
// name, waiting up to wait for the driver to create it. Without udev there
// are no /dev/virtio-ports links: the name is read from sysfs.
func FindVirtioPort(name string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		ents, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, e := range ents {
			b, err := os.ReadFile(e)
			if err != nil || strings.TrimSpace(string(b)) != name {
				continue
			}
			dev := "/dev/" + filepath.Base(filepath.Dir(e))
			if _, err := os.Stat(dev); err == nil {
				return dev, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("virtio-serial port %q not found (have %d ports)", name, len(ents))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ServeVirtioSerial serves sessions on a virtio-serial port for ever (until
// ctx is done). The port is reopened for each session, so that a session's
// blocked writes die with it. While no host is connected the agent blocks in
// the kernel (poll for POLLOUT, which the port only reports once a host is
// connected): it costs no CPU.
func ServeVirtioSerial(ctx context.Context, dev string, opts ServeOptions) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	backoff := 10 * time.Millisecond
	for ctx.Err() == nil {
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			// EBUSY: the previous open is still being released.
			log.Warn("open agent port", "dev", dev, "err", err)
			time.Sleep(backoff)
			backoff = min(backoff*2, time.Second)
			continue
		}
		backoff = 10 * time.Millisecond
		if err := waitHostConnected(ctx, f); err != nil {
			f.Close()
			continue
		}
		log.Debug("host connected")
		if err := Serve(ctx, f, opts); err != nil {
			log.Debug("session", "err", err)
		}
		f.Close()
	}
	return ctx.Err()
}

// waitHostConnected blocks until the port reports POLLOUT: virtio_console
// sets it only while a host is connected, and wakes pollers when one
// connects. (POLLIN is no use: with no host the port reports POLLIN|POLLHUP
// and reads return EOF at once, which is why polling reads burns CPU.)
func waitHostConnected(ctx context.Context, f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	var last unix.PollFd
	werr := rc.Write(func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(fds, 0)
		last = fds[0]
		if err != nil {
			return !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EAGAIN)
		}
		return n > 0 && fds[0].Revents&unix.POLLOUT != 0
	})
	if werr != nil {
		return werr
	}
	if last.Revents&unix.POLLOUT == 0 {
		return fmt.Errorf("port not writable (revents %#x)", last.Revents)
	}
	return nil
}

// ServeVsock listens on AF_VSOCK port and serves every connection. It is
// meant for Firecracker, whose host side is a unix socket (CONNECT <port>).
func ServeVsock(ctx context.Context, port uint32, opts ServeOptions) error {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("vsock bind port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return fmt.Errorf("vsock listen: %w", err)
	}
	lf := os.NewFile(uintptr(fd), "vsock-listener")
	defer lf.Close()
	context.AfterFunc(ctx, func() { lf.Close() })
	rc, err := lf.SyscallConn()
	if err != nil {
		return err
	}
	for {
		var nfd int
		var aerr error
		if err := rc.Read(func(fd uintptr) bool {
			nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
			return !errors.Is(aerr, unix.EAGAIN)
		}); err != nil {
			return err
		}
		if aerr != nil {
			if errors.Is(aerr, unix.EINTR) || errors.Is(aerr, unix.ECONNABORTED) {
				continue
			}
			return fmt.Errorf("vsock accept: %w", aerr)
		}
		go Serve(ctx, os.NewFile(uintptr(nfd), "vsock-conn"), opts)
	}
}
