// Package image builds, imports, validates and describes banger's guest
// images.
//
// An image is a read-only directory; every VM runs on a copy-on-write
// overlay of it. Its layout (the names are the File* constants):
//
//	vmlinux        ELF kernel with a PVH entry note (what QEMU -kernel and
//	               Firecracker boot); derived from bzImage when there is one
//	bzImage        the kernel as shipped (absent when imported as an ELF)
//	modules/       the guest's kernel modules, flat and uncompressed, and
//	modules/load-order, one file name per line, dependencies first
//	initrd.img     only in imported images that brought their own
//	rootfs.ext4    the root file system (sparse), mounted from /dev/vda
//	manifest.json  written last; see Manifest
//
// The initrd is not part of a built image: internal/initrd composes it at
// VM start from modules/ and the agent binary, so an image never carries
// an agent of another version. The agent runs as PID 1, so the root file
// system has no init system; it has Debian minbase plus the packages asked
// for (by default git, iproute2, ca-certificates, openssh-server), no
// sshd host keys (the guest runs ssh-keygen -A), an empty machine-id, a
// placeholder resolv.conf, and no docs, man pages, translations or apt
// caches.
//
// Build runs debootstrap (in its own mount and pid namespaces, so that a
// cancelled build leaves no process or mount behind), fetches the guest
// kernel with the host's apt (apt-get download; no package is installed
// on the host), and builds rootfs.ext4 with mkfs.ext4 -d, without mounting
// anything. A build keeps what it can for the next one in its cache
// directory: debootstrap's packages, the kernel .deb, and the prepared root
// tree, keyed by the inputs and the mirror's current InRelease, so that a
// second build of the same image takes seconds instead of a debootstrap.
// Every build and import happens in a temporary directory that is
// renamed to its destination at the end and removed on any failure.
package image
