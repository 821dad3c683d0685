package image

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/pierrec/lz4/v4"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

// KernelFormat is what a kernel file turned out to be.
type KernelFormat string

const (
	KernelBzImage KernelFormat = "bzImage" // x86 boot protocol image
	KernelELF     KernelFormat = "elf"     // uncompressed vmlinux
)

// Offsets in the x86 boot protocol's setup header
// (Documentation/arch/x86/boot.rst), relative to the start of the file.
const (
	hdrSetupSects    = 0x1f1
	hdrMagic         = 0x202 // "HdrS"
	hdrVersion       = 0x206
	hdrKernelVersion = 0x20e // u16: offset of the version string - 0x200
	hdrPayloadOffset = 0x248 // u32: from the start of the protected-mode code
	hdrPayloadLength = 0x24c
	hdrEnd           = 0x260
)

// ELF note that marks a PVH entry point: owner "Xen", type
// XEN_ELFNOTE_PHYS32_ENTRY. QEMU (-kernel with an ELF) and Firecracker need
// it to boot an uncompressed kernel.
const (
	pvhNoteOwner = "Xen"
	pvhNoteType  = 18
)

// maxKernelSize bounds what is read into memory from a kernel file.
const maxKernelSize = 512 << 20

// DetectKernel reports whether path is a bzImage or an ELF kernel.
func DetectKernel(path string) (KernelFormat, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	hdr := make([]byte, hdrEnd)
	n, err := io.ReadFull(f, hdr)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	hdr = hdr[:n]
	switch {
	case len(hdr) >= 4 && bytes.Equal(hdr[:4], []byte(elf.ELFMAG)):
		return KernelELF, nil
	case len(hdr) >= hdrMagic+4 && string(hdr[hdrMagic:hdrMagic+4]) == "HdrS":
		return KernelBzImage, nil
	}
	return "", errdefs.InvalidArgument(fmt.Sprintf("%s is not a kernel (neither a bzImage nor an ELF vmlinux)", path))
}

// bzImageHeader is the part of the setup header banger uses.
type bzImageHeader struct {
	protocol      uint16
	versionOffset int // absolute offset of the version string, 0 if none
	payloadStart  int // absolute offset of the compressed kernel
	payloadLength int
}

func parseBzImage(data []byte) (bzImageHeader, error) {
	var h bzImageHeader
	if len(data) < hdrEnd || string(data[hdrMagic:hdrMagic+4]) != "HdrS" {
		return h, errdefs.InvalidArgument("not a bzImage (no HdrS setup header)")
	}
	h.protocol = binary.LittleEndian.Uint16(data[hdrVersion:])
	if v := binary.LittleEndian.Uint16(data[hdrKernelVersion:]); v != 0 {
		h.versionOffset = int(v) + 0x200
	}
	setupSects := int(data[hdrSetupSects])
	if setupSects == 0 {
		setupSects = 4
	}
	if h.protocol >= 0x208 {
		h.payloadStart = (setupSects+1)*512 + int(binary.LittleEndian.Uint32(data[hdrPayloadOffset:]))
		h.payloadLength = int(binary.LittleEndian.Uint32(data[hdrPayloadLength:]))
	}
	return h, nil
}

// KernelVersionFromBzImage returns the release of a bzImage kernel (what
// `uname -r` prints in the guest, e.g. "6.1.0-56-cloud-amd64"), read at the
// offset that the setup header's kernel_version field gives.
func KernelVersionFromBzImage(path string) (string, error) {
	full, err := kernelVersionStringFromBzImage(path)
	if err != nil {
		return "", err
	}
	return firstField(full), nil
}

func kernelVersionStringFromBzImage(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 64<<10)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	head = head[:n]
	h, err := parseBzImage(head)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if h.versionOffset == 0 || h.versionOffset >= len(head) {
		return "", errdefs.InvalidArgument(fmt.Sprintf("%s: bzImage carries no kernel version string", path))
	}
	s := head[h.versionOffset:]
	if i := bytes.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	if len(s) == 0 {
		return "", errdefs.InvalidArgument(fmt.Sprintf("%s: empty kernel version string", path))
	}
	return string(s), nil
}

// KernelVersionFromELF returns the release of an uncompressed kernel, read
// from its "Linux version X ..." banner.
func KernelVersionFromELF(path string) (string, error) {
	data, err := readBounded(path, maxKernelSize)
	if err != nil {
		return "", err
	}
	return kernelVersionFromVmlinux(data)
}

func kernelVersionFromVmlinux(data []byte) (string, error) {
	const banner = "Linux version "
	for off := 0; ; {
		i := bytes.Index(data[off:], []byte(banner))
		if i < 0 {
			return "", errdefs.InvalidArgument("no \"Linux version\" banner in kernel")
		}
		start := off + i + len(banner)
		end := start
		for end < len(data) && end-start < 128 && data[end] > ' ' && data[end] < 0x7f {
			end++
		}
		// The banner is also a format string ("Linux version %s") in some
		// builds; skip anything that does not look like a release.
		if v := string(data[start:end]); end > start && v[0] >= '0' && v[0] <= '9' {
			return v, nil
		}
		off = start
	}
}

// KernelVersion returns the release of a kernel in either format.
func KernelVersion(path string) (string, error) {
	format, err := DetectKernel(path)
	if err != nil {
		return "", err
	}
	if format == KernelBzImage {
		return KernelVersionFromBzImage(path)
	}
	return KernelVersionFromELF(path)
}

// ExtractVmlinux writes the ELF kernel inside the bzImage at bzImagePath to
// out, and checks that it is an x86-64 ELF with a PVH entry note.
// The payload is found through the setup header (payload_offset/length);
// LZ4 (what Debian ships) and gzip/bzip2 are decompressed in-process, xz and
// zstd through the xz and zstd programs.
func ExtractVmlinux(ctx context.Context, bzImagePath, out string) error {
	data, err := readBounded(bzImagePath, maxKernelSize)
	if err != nil {
		return err
	}
	vmlinux, err := decompressBzImage(ctx, data)
	if err != nil {
		return fmt.Errorf("extract vmlinux from %s: %w", bzImagePath, err)
	}
	if err := checkVmlinux(vmlinux); err != nil {
		return fmt.Errorf("extract vmlinux from %s: %w", bzImagePath, err)
	}
	return writeFileAtomic(out, vmlinux, 0o644)
}

// compression magics at the start of a bzImage payload.
var (
	magicLZ4Legacy = []byte{0x02, 0x21, 0x4c, 0x18}
	magicGzip      = []byte{0x1f, 0x8b}
	magicXZ        = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	magicZstd      = []byte{0x28, 0xb5, 0x2f, 0xfd}
	magicBzip2     = []byte("BZh")
)

func decompressBzImage(ctx context.Context, data []byte) ([]byte, error) {
	h, err := parseBzImage(data)
	if err != nil {
		return nil, err
	}
	var payload []byte
	if h.payloadLength > 4 && h.payloadStart > 0 && h.payloadStart+h.payloadLength <= len(data) {
		payload = data[h.payloadStart : h.payloadStart+h.payloadLength]
	} else {
		// Old boot protocol: search for an LZ4 stream after the setup code.
		i := bytes.Index(data[hdrEnd:], magicLZ4Legacy)
		if i < 0 {
			return nil, errdefs.InvalidArgument("no compressed kernel found in bzImage")
		}
		payload = data[hdrEnd+i:]
	}
	// The kernel build appends the uncompressed size (le32) to every
	// compressed payload ("size_append"); it is not part of the stream.
	var wantSize int
	stream := payload
	if len(payload) > 4 {
		wantSize = int(binary.LittleEndian.Uint32(payload[len(payload)-4:]))
		stream = payload[:len(payload)-4]
	}
	var out []byte
	switch {
	case bytes.HasPrefix(stream, magicLZ4Legacy):
		out, err = decompressLZ4Legacy(stream, wantSize)
	case bytes.HasPrefix(stream, magicGzip):
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(bytes.NewReader(stream)); err == nil {
			zr.Multistream(false)
			out, err = io.ReadAll(io.LimitReader(zr, maxKernelSize))
		}
	case bytes.HasPrefix(stream, magicBzip2):
		out, err = io.ReadAll(io.LimitReader(bzip2.NewReader(bytes.NewReader(stream)), maxKernelSize))
	case bytes.HasPrefix(stream, magicXZ):
		out, err = system.RunOpts(ctx, system.Opts{Stdin: bytes.NewReader(stream)}, "xz", "-dc", "--single-stream")
	case bytes.HasPrefix(stream, magicZstd):
		out, err = system.RunOpts(ctx, system.Opts{Stdin: bytes.NewReader(stream)}, "zstd", "-dc")
	default:
		return nil, errdefs.InvalidArgument(fmt.Sprintf("unsupported kernel compression (payload starts % x)", stream[:min(len(stream), 6)]))
	}
	if err != nil {
		return nil, fmt.Errorf("decompress kernel: %w", err)
	}
	if wantSize != 0 && len(out) != wantSize {
		return nil, fmt.Errorf("decompressed kernel is %d bytes, header says %d", len(out), wantSize)
	}
	return out, nil
}

// decompressLZ4Legacy decodes the LZ4 "legacy" frame that `lz4 -l` writes
// and the kernel uses: magic, then blocks of (le32 compressed size, data)
// that each decompress to at most 8 MiB. Concatenated frames repeat the
// magic.
func decompressLZ4Legacy(stream []byte, sizeHint int) ([]byte, error) {
	const blockMax = 8 << 20
	out := make([]byte, 0, max(sizeHint, blockMax))
	buf := make([]byte, blockMax)
	off := 0
	for off+4 <= len(stream) {
		n := int(binary.LittleEndian.Uint32(stream[off:]))
		off += 4
		if n == int(binary.LittleEndian.Uint32(magicLZ4Legacy)) {
			continue // start of a (next) frame
		}
		if n == 0 {
			break
		}
		if n > len(stream)-off {
			return nil, fmt.Errorf("lz4: block of %d bytes at %d overruns the stream (%d bytes)", n, off-4, len(stream))
		}
		m, err := lz4.UncompressBlock(stream[off:off+n], buf)
		if err != nil {
			return nil, fmt.Errorf("lz4: block at %d: %w", off-4, err)
		}
		if len(out)+m > maxKernelSize {
			return nil, errors.New("lz4: kernel larger than 512 MiB")
		}
		out = append(out, buf[:m]...)
		off += n
	}
	if len(out) == 0 {
		return nil, errors.New("lz4: empty stream")
	}
	return out, nil
}

// checkVmlinux verifies that data is an x86-64 ELF executable with a PVH
// entry note.
func checkVmlinux(data []byte) error {
	if !bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
		return errdefs.InvalidArgument("decompressed kernel is not an ELF file")
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return errdefs.InvalidArgument(fmt.Sprintf("kernel ELF: %v", err))
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return errdefs.InvalidArgument(fmt.Sprintf("kernel ELF is for %s, not x86-64", f.Machine))
	}
	ok, err := hasPVHNote(f)
	if err != nil {
		return err
	}
	if !ok {
		return errdefs.InvalidArgument("kernel ELF has no PVH entry note (Xen, XEN_ELFNOTE_PHYS32_ENTRY): QEMU and Firecracker cannot boot it directly")
	}
	return nil
}

// hasPVHNote reports whether an ELF kernel carries the PVH entry note.
func hasPVHNote(f *elf.File) (bool, error) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(io.LimitReader(p.Open(), 1<<20))
		if err != nil {
			return false, fmt.Errorf("read ELF notes: %w", err)
		}
		for _, n := range parseNotes(data, f.ByteOrder) {
			if n.name == pvhNoteOwner && n.typ == pvhNoteType {
				return true, nil
			}
		}
	}
	return false, nil
}

type elfNote struct {
	name string
	typ  uint32
	desc []byte
}

func parseNotes(data []byte, bo binary.ByteOrder) []elfNote {
	var notes []elfNote
	align4 := func(n int) int { return (n + 3) &^ 3 }
	for off := 0; off+12 <= len(data); {
		namesz := int(bo.Uint32(data[off:]))
		descsz := int(bo.Uint32(data[off+4:]))
		typ := bo.Uint32(data[off+8:])
		off += 12
		if namesz < 0 || descsz < 0 || off+align4(namesz) > len(data) {
			break
		}
		name := string(bytes.TrimRight(data[off:off+namesz], "\x00"))
		off += align4(namesz)
		if off+descsz > len(data) {
			break
		}
		notes = append(notes, elfNote{name: name, typ: typ, desc: data[off : off+descsz]})
		off += align4(descsz)
	}
	return notes
}

// checkVmlinuxFile is checkVmlinux on a file.
func checkVmlinuxFile(path string) error {
	data, err := readBounded(path, maxKernelSize)
	if err != nil {
		return err
	}
	if err := checkVmlinux(data); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > limit {
		return nil, errdefs.InvalidArgument(fmt.Sprintf("%s is %d bytes, more than a kernel can be", path, st.Size()))
	}
	return io.ReadAll(f)
}

func firstField(s string) string {
	for i, c := range s {
		if c == ' ' || c == '\t' || c == '\n' {
			return s[:i]
		}
	}
	return s
}
