package image

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/errdefs"
)

// FormatVersion is the version of the image directory layout and manifest
// that this package writes and reads.
const FormatVersion = 1

// File names inside an image directory. Other packages read exactly these.
const (
	FileManifest  = "manifest.json"
	FileVmlinux   = "vmlinux"     // ELF kernel with a PVH note
	FileBzImage   = "bzImage"     // the kernel as shipped (absent when imported as ELF)
	FileInitrd    = "initrd.img"  // only in imported images that brought their own
	FileRootfs    = "rootfs.ext4" // read-only base root file system
	DirModules    = "modules"     // flat directory of .ko files
	FileLoadOrder = "modules/load-order"
)

// Sources of an image.
const (
	SourceBuild  = "build"
	SourceImport = "import"
)

// FileInfo is one file's entry in a manifest.
type FileInfo struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Manifest describes an image directory. Digest is the image's identity: a
// sha256 over the files' digests (see ComputeDigest), so two images with the
// same content have the same digest whatever their name or date.
type Manifest struct {
	FormatVersion        int                 `json:"format_version"`
	Name                 string              `json:"name"`
	Source               string              `json:"source"` // "build" or "import"
	Suite                string              `json:"suite,omitempty"`
	Mirror               string              `json:"mirror,omitempty"`
	Packages             []string            `json:"packages,omitempty"`
	KernelVersion        string              `json:"kernel_version"`
	KernelPackage        string              `json:"kernel_package,omitempty"`
	KernelPackageVersion string              `json:"kernel_package_version,omitempty"`
	Modules              []string            `json:"modules,omitempty"` // load order (file names), as in modules/load-order
	RootfsSize           int64               `json:"rootfs_size"`       // apparent size of rootfs.ext4
	Created              time.Time           `json:"created"`
	Files                map[string]FileInfo `json:"files"`
	Digest               string              `json:"digest"`

	// Dir is where Load found the image; not stored.
	Dir string `json:"-"`
}

// Path returns the absolute path of a file of the image (one of the File*
// names), valid after Load.
func (m *Manifest) Path(name string) string { return filepath.Join(m.Dir, name) }

// Has reports whether the image has the named file.
func (m *Manifest) Has(name string) bool { _, ok := m.Files[name]; return ok }

// ComputeDigest returns the sha256 (hex) of the lines "<sha256>  <name>\n",
// sorted by name: the sha256sum(1) listing of the image's files.
func ComputeDigest(files map[string]FileInfo) string {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	h := sha256.New()
	for _, n := range names {
		fmt.Fprintf(h, "%s  %s\n", files[n].SHA256, n)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ShortDigest is the first 12 hex digits of the digest, for display.
func (m *Manifest) ShortDigest() string {
	if len(m.Digest) < 12 {
		return m.Digest
	}
	return m.Digest[:12]
}

// Load reads and validates dir/manifest.json: format version, required
// files present with the recorded sizes, digest consistent with the file
// list. It does not re-hash contents (Verify does).
func Load(dir string) (*Manifest, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(abs, FileManifest))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, errdefs.NotFound(fmt.Sprintf("no image at %s (no %s)", abs, FileManifest))
		}
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, errdefs.InvalidArgument(fmt.Sprintf("image %s: bad manifest: %v", abs, err))
	}
	m.Dir = abs
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("image %s: %w", abs, err)
	}
	for name, fi := range m.Files {
		st, err := os.Stat(m.Path(name))
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", abs, errdefs.InvalidArgument(fmt.Sprintf("file %s: %v", name, err)))
		}
		if st.Size() != fi.Size {
			return nil, fmt.Errorf("image %s: %w", abs, errdefs.InvalidArgument(fmt.Sprintf("file %s is %d bytes, manifest says %d", name, st.Size(), fi.Size)))
		}
	}
	return &m, nil
}

func (m *Manifest) validate() error {
	bad := func(format string, a ...any) error { return errdefs.InvalidArgument(fmt.Sprintf(format, a...)) }
	if m.FormatVersion != FormatVersion {
		return bad("manifest format_version %d, this banger reads %d", m.FormatVersion, FormatVersion)
	}
	if m.Name == "" {
		return bad("manifest has no name")
	}
	for _, req := range []string{FileVmlinux, FileRootfs} {
		if !m.Has(req) {
			return bad("manifest lists no %s", req)
		}
	}
	for name, fi := range m.Files {
		if !validFileName(name) {
			return bad("manifest lists a bad file name %q", name)
		}
		if len(fi.SHA256) != 64 {
			return bad("manifest: file %s has a bad sha256 %q", name, fi.SHA256)
		}
	}
	if got := ComputeDigest(m.Files); got != m.Digest {
		return bad("manifest digest %s does not match its files (%s)", m.Digest, got)
	}
	return nil
}

// validFileName accepts the relative names an image may hold: one level or
// modules/<file>, no "..", no absolute paths.
func validFileName(name string) bool {
	if name == "" || filepath.IsAbs(name) || filepath.Clean(name) != name || strings.HasPrefix(name, "..") {
		return false
	}
	dir, base := filepath.Split(name)
	return (dir == "" || dir == DirModules+"/") && base != "" && base != FileManifest
}

// Verify re-hashes every file of the image at dir and compares it with the
// manifest. The error lists every mismatch.
func Verify(dir string) error {
	m, err := Load(dir)
	if err != nil {
		return err
	}
	var bad []string
	for _, name := range sortedKeys(m.Files) {
		fi, err := hashFile(m.Path(name))
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		if fi != m.Files[name] {
			bad = append(bad, fmt.Sprintf("%s: sha256 %s (%d bytes), manifest says %s (%d bytes)", name, fi.SHA256, fi.Size, m.Files[name].SHA256, m.Files[name].Size))
		}
	}
	if len(bad) > 0 {
		return errdefs.InvalidArgument(fmt.Sprintf("image %s (%s) is corrupt: %s", m.Name, m.Dir, strings.Join(bad, "; ")))
	}
	return nil
}

// writeManifest hashes every file under dir (except the manifest), fills
// m.Files and m.Digest and writes dir/manifest.json (last, atomically).
func writeManifest(dir string, m *Manifest) error {
	files := map[string]FileInfo{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			if rel == "." || rel == DirModules {
				return nil
			}
			return fmt.Errorf("unexpected directory %s in image", rel)
		}
		if rel == FileManifest {
			return nil
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("unexpected non-regular file %s in image", rel)
		}
		if !validFileName(rel) {
			return fmt.Errorf("unexpected file %s in image", rel)
		}
		fi, err := hashFile(path)
		if err != nil {
			return err
		}
		files[rel] = fi
		return nil
	})
	if err != nil {
		return err
	}
	m.FormatVersion = FormatVersion
	m.Files = files
	m.Digest = ComputeDigest(files)
	m.Dir = dir
	if err := m.validate(); err != nil {
		return err
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, FileManifest), append(data, '\n'), 0o644)
}

// hashFile returns a file's size and sha256. Holes of a sparse file are
// hashed as the zeros they read as (so the digest is sha256sum(1)'s), but
// without reading them: SEEK_DATA/SEEK_HOLE find them, which spares the
// page cache gigabytes of zero pages for a mostly empty rootfs.ext4.
func hashFile(path string) (FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return FileInfo{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return FileInfo{}, err
	}
	size := st.Size()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	var zeros []byte
	pos := int64(0) // hashed up to here
	hashZeros := func(n int64) {
		if zeros == nil {
			zeros = make([]byte, len(buf))
		}
		for n > 0 {
			k := min(n, int64(len(zeros)))
			h.Write(zeros[:k])
			n -= k
		}
	}
	err = disk.DataExtents(f, size, func(off, end int64) error {
		hashZeros(off - pos)
		if _, err := io.CopyBuffer(h, io.NewSectionReader(f, off, end-off), buf); err != nil {
			return fmt.Errorf("hash %s: %w", path, err)
		}
		pos = end
		return nil
	})
	if err != nil {
		return FileInfo{}, err
	}
	hashZeros(size - pos)
	return FileInfo{Size: size, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
