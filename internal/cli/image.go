package cli

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/client"
)

func newImageCmd(e *env) *cobra.Command {
	cmd := group(&cobra.Command{Use: "image", Short: "Build, import, list and remove guest images"})
	cmd.AddCommand(newImageBuildCmd(e), newImageImportCmd(e), newImageListCmd(e), newImageShowCmd(e), newImageRmCmd(e),
		newImageWarmCmd(e), newImagePruneCmd(e))
	return cmd
}

// imageProgress shows every phase of an image command: builds take
// minutes. With --json, the events are NDJSON on stdout and the command
// ends with the result event.
func (e *env) imageProgress(jsonOut bool) (client.Progress, func()) {
	return e.progress(e.progressFor(jsonOut, true))
}

func newImageBuildCmd(e *env) *cobra.Command {
	var req api.BuildImageRequest
	var pkgs string
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "build [NAME]",
		Short: "Build a Debian guest image (debootstrap + Debian's cloud kernel)",
		Long: `Build a guest image: a Debian root filesystem (debootstrap --variant=minbase
from the mirror the host's apt uses, with a persistent package cache),
Debian's linux-image-cloud-amd64 kernel (as bzImage and as the ELF vmlinux
inside it) and the virtio modules the guest needs. Built in a temporary
directory and registered only when complete: an interrupted or failed
build leaves nothing. NAME defaults to "default".

Progress: on a terminal, one live line with the step (1/6 kernel ... 6/6
done), a bar, the amount done (bytes for downloads, debootstrap's steps
with the package it is at) and the time left; otherwise a line per step
and per quarter of a long one; with --json, NDJSON events on stdout.`,
		Args: args(cobra.MaximumNArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			if len(a) == 1 {
				req.Name = a[0]
			}
			if pkgs != "" {
				for _, p := range strings.Split(pkgs, ",") {
					if p = strings.TrimSpace(p); p != "" {
						req.Packages = append(req.Packages, p)
					}
				}
			}
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			p, done := e.imageProgress(jsonOut)
			im, err := cl.BuildImage(c.Context(), req, p)
			done()
			if err != nil {
				if jsonOut {
					return printEventError(e.stdout, err)
				}
				return err
			}
			if jsonOut {
				return printEventResult(e.stdout, im)
			}
			fmt.Fprintf(e.stdout, "%s %s\n", im.Name, im.Digest)
			return nil
		},
	}
	cmd.Flags().StringVar(&req.Suite, "suite", "", "Debian suite (default bookworm)")
	cmd.Flags().StringVar(&pkgs, "packages", "", "comma-separated packages to install (default git,iproute2,ca-certificates,openssh-server)")
	cmd.Flags().StringVar(&req.Size, "size", "", "root filesystem size (default 2G; sparse)")
	cmd.Flags().StringVar(&req.Mirror, "mirror", "", "Debian mirror URL (default: the host's apt source)")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print progress and the image as NDJSON events ({\"progress\":...} lines, then {\"result\":IMAGE})")
	return cmd
}

func newImageImportCmd(e *env) *cobra.Command {
	var req api.ImportImageRequest
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "import NAME --kernel K --rootfs R.ext4 [--initrd I] [--modules DIR]",
		Short: "Register an image made of an existing kernel and ext4 root filesystem",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			req.Name = a[0]
			for _, p := range []*string{&req.Kernel, &req.Rootfs, &req.Initrd, &req.Modules} {
				if *p != "" {
					abs, err := filepath.Abs(*p)
					if err != nil {
						return err
					}
					*p = abs
				}
			}
			if req.Kernel == "" || req.Rootfs == "" {
				return usageError{fmt.Errorf("import needs --kernel and --rootfs")}
			}
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			p, done := e.imageProgress(jsonOut)
			im, err := cl.ImportImage(c.Context(), req, p)
			done()
			if err != nil {
				if jsonOut {
					return printEventError(e.stdout, err)
				}
				return err
			}
			if jsonOut {
				return printEventResult(e.stdout, im)
			}
			fmt.Fprintf(e.stdout, "%s %s\n", im.Name, im.Digest)
			return nil
		},
	}
	cmd.Flags().StringVar(&req.Kernel, "kernel", "", "kernel: bzImage or ELF vmlinux")
	cmd.Flags().StringVar(&req.Rootfs, "rootfs", "", "ext4 root filesystem image")
	cmd.Flags().StringVar(&req.Initrd, "initrd", "", "initrd (optional)")
	cmd.Flags().StringVar(&req.Modules, "modules", "", "directory of .ko files with a load-order file (optional)")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print progress and the image as NDJSON events ({\"progress\":...} lines, then {\"result\":IMAGE})")
	return cmd
}

func newImageListCmd(e *env) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use: "ls", Aliases: []string{"list"}, Short: "List images", Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			list, err := cl.ListImages(c.Context())
			if err != nil {
				return err
			}
			if jsonOut {
				return printJSON(e.stdout, list)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tKERNEL\tSIZE\tDIGEST\tCREATED\tVMS")
			for _, im := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", im.Name, im.KernelVersion, humanSize(im.SizeBytes), shortDigest(im.Digest), im.CreatedAt.Local().Format(time.DateTime), len(im.VMs))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

func shortDigest(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	if len(d) > 12 {
		return d[:12]
	}
	return d
}

func newImageShowCmd(e *env) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use: "show NAME", Short: "Show an image: files with sizes and sha256, kernel version, created, VMs using it", Args: args(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			im, err := cl.GetImage(c.Context(), a[0])
			if err != nil {
				return err
			}
			if jsonOut {
				return printJSON(e.stdout, im)
			}
			fmt.Fprintf(e.stdout, "name:     %s\nid:       %s\ndigest:   %s\nkernel:   %s\nsuite:    %s\npackages: %s\ncreated:  %s\ndir:      %s\nvms:      %s\nfiles:\n",
				im.Name, im.ID, im.Digest, im.KernelVersion, dash(im.Suite), dash(strings.Join(im.Packages, ",")),
				im.CreatedAt.Local().Format(time.RFC3339), im.Dir, dash(strings.Join(im.VMs, ",")))
			for _, t := range im.Templates {
				use := ""
				if t.InUse {
					use = ", in use"
				}
				if t.Spare != "" {
					use += ", spare clone " + t.Spare
				}
				fmt.Fprintf(e.stdout, "template: %s  %d vCPU, %d MiB, disk %s: %s%s\n", t.Key[:12], t.VCPUs, t.MemoryMiB, humanSize(t.DiskBytes), humanSize(t.SizeBytes), use)
			}
			names := make([]string, 0, len(im.Files))
			for n := range im.Files {
				names = append(names, n)
			}
			sort.Strings(names)
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			for _, n := range names {
				f := im.Files[n]
				fmt.Fprintf(tw, "  %s\t%s\t%s\n", n, humanSize(f.Size), f.SHA256)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

func newImageRmCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use: "rm NAME", Aliases: []string{"delete"}, Short: "Remove an image (refused while a VM uses it)", Args: args(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			if err := cl.RemoveImage(c.Context(), a[0]); err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, a[0])
			return nil
		},
	}
}

func newImageWarmCmd(e *env) *cobra.Command {
	var req api.WarmRequest
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "warm NAME [--vcpu N] [--mem MiB] [--disk SIZE]",
		Short: "Build the warm-start template of an image for a machine shape now",
		Long: `Boot the image once, snapshot it and keep the snapshot as a template:
later VMs of the same image and shape (vCPUs, memory, disk) restore a clone
of it in a fraction of a cold boot, each with its own identity (RNG seed,
clock, hostname, machine-id, MAC, address, ssh host keys). banger also
builds templates by itself, in the background, after the first cold boot
of a shape; this command does it ahead of time.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			p, done := e.imageProgress(jsonOut)
			t, err := cl.WarmImage(c.Context(), a[0], req, p)
			done()
			if err != nil {
				if jsonOut {
					return printEventError(e.stdout, err)
				}
				return err
			}
			if jsonOut {
				return printEventResult(e.stdout, t)
			}
			fmt.Fprintf(e.stdout, "%s %s (%d vCPU, %d MiB, %s)\n", a[0], t.Key, t.VCPUs, t.MemoryMiB, humanSize(t.SizeBytes))
			return nil
		},
	}
	cmd.Flags().IntVar(&req.VCPUs, "vcpu", 0, "virtual CPUs (default: vm.vcpus)")
	cmd.Flags().IntVar(&req.MemoryMiB, "mem", 0, "memory in MiB (default: vm.memory_mib)")
	cmd.Flags().StringVar(&req.Disk, "disk", "", "root disk size (default: vm.disk)")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print progress and the template as NDJSON events ({\"progress\":...} lines, then {\"result\":TEMPLATE})")
	return cmd
}

func newImagePruneCmd(e *env) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use: "prune", Short: "Remove warm-start templates that no VM uses", Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			r, err := cl.PruneImages(c.Context())
			if err != nil {
				return err
			}
			if jsonOut {
				return printJSON(e.stdout, r)
			}
			fmt.Fprintf(e.stdout, "removed %d templates, %s freed\n", len(r.Removed), humanSize(r.Bytes))
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}
