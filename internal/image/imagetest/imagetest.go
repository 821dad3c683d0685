// Package imagetest gives tests a real, bootable banger image, built once
// per machine and reused by every later test run and test binary.
//
// The image lives outside the repository, in $BANGER_TEST_CACHE (default
// /var/cache/banger-test), as image-<key> where key hashes the build
// options that decide its content. Its build caches (debootstrap packages,
// the kernel .deb) are in $BANGER_TEST_CACHE/build. A file lock makes
// parallel test binaries wait for one build instead of building twice.
// Building needs root and the Debian mirror; a build failure fails the
// test, it never skips it.
package imagetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/image"
)

// DefaultCacheDir is used when BANGER_TEST_CACHE is not set.
const DefaultCacheDir = "/var/cache/banger-test"

// CacheDir returns the test cache directory ($BANGER_TEST_CACHE or
// DefaultCacheDir).
func CacheDir() string {
	if d := os.Getenv("BANGER_TEST_CACHE"); d != "" {
		return d
	}
	return DefaultCacheDir
}

// Options returns the build options of the test image, with caches and
// destination under dir.
func Options(dir string) (image.BuildOptions, error) {
	o := image.BuildOptions{Name: "banger-test"}
	key, err := o.Key()
	if err != nil {
		return o, err
	}
	o.CacheDir = filepath.Join(dir, "build")
	o.TmpDir = filepath.Join(dir, "tmp", key)
	o.Dest = filepath.Join(dir, "image-"+key)
	return o, nil
}

// TestImage returns the directory of the test image (see package image
// for its layout), building it first if no valid one exists.
func TestImage(t testing.TB) string {
	t.Helper()
	dir, err := Ensure(t.Context(), t.Logf)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return dir
}

// Ensure is TestImage for programs (the benchmarks): it returns the test
// image's directory, building it first if no valid one exists, and logs
// progress through logf.
func Ensure(ctx context.Context, logf func(format string, args ...any)) (string, error) {
	dir, err := filepath.Abs(CacheDir())
	if err != nil {
		return "", fmt.Errorf("imagetest: %w", err)
	}
	o, err := Options(dir)
	if err != nil {
		return "", fmt.Errorf("imagetest: %w", err)
	}
	if valid(o.Dest) == nil {
		return o.Dest, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("imagetest: %w", err)
	}
	unlock, err := lock(logf, o.Dest+".lock")
	if err != nil {
		return "", fmt.Errorf("imagetest: %w", err)
	}
	defer unlock()
	// Someone else may have built it while we waited.
	if err := valid(o.Dest); err == nil {
		return o.Dest, nil
	} else if _, serr := os.Lstat(o.Dest); serr == nil {
		logf("imagetest: replacing invalid test image %s: %v", o.Dest, err)
		if err := os.RemoveAll(o.Dest); err != nil {
			return "", fmt.Errorf("imagetest: %w", err)
		}
	}
	// What a killed build left (we hold the lock for this key's scratch).
	if err := image.RemoveStaleTemp(o.TmpDir); err != nil {
		return "", fmt.Errorf("imagetest: %w", err)
	}
	logPath := o.Dest + ".log"
	logFile, err := os.Create(logPath)
	if err != nil {
		return "", fmt.Errorf("imagetest: %w", err)
	}
	defer logFile.Close()
	o.Log = logFile
	start := time.Now()
	o.Progress = func(p api.Progress) {
		if p.Unit == "" { // phases, not the meters' ticks
			logf("imagetest: [%5.1fs] %s: %s", time.Since(start).Seconds(), p.Phase, p.Detail)
		}
	}
	logf("imagetest: building test image %s (log: %s)", o.Dest, logPath)
	m, err := image.Build(ctx, o)
	if err != nil {
		return "", fmt.Errorf("imagetest: build test image failed (full log in %s): %w", logPath, err)
	}
	logf("imagetest: built %s kernel %s digest %s in %s", m.Dir, m.KernelVersion, m.ShortDigest(), time.Since(start).Round(time.Second))
	return o.Dest, nil
}

// verified holds the image directories this process has re-hashed, so
// that each test binary checks the shared image's content once (~1 s).
var verified sync.Map

// valid checks the image's manifest and file sizes, and its content once
// per process: a test that wrote to the base image by mistake is caught.
func valid(dir string) error {
	if _, err := image.Load(dir); err != nil {
		return err
	}
	if _, ok := verified.Load(dir); ok {
		return nil
	}
	if err := image.Verify(dir); err != nil {
		return err
	}
	verified.Store(dir, true)
	return nil
}

// lock takes an exclusive flock on path, logging when it has to wait.
func lock(logf func(string, ...any), path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		logf("imagetest: another test process is building the test image; waiting (%s)", path)
		for {
			err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
			if !errors.Is(err, syscall.EINTR) {
				break
			}
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
