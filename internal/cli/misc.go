package cli

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger-sh/banger/client"
	"github.com/banger-sh/banger/internal/config"
	"github.com/banger-sh/banger/internal/daemon"
	"github.com/banger-sh/banger/internal/doctor"
	"github.com/banger-sh/banger/internal/version"
)

func newVersionCmd(e *env) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use: "version", Short: "Print banger's version (and the daemon's, when it runs)", Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			out := versionOutput{Version: version.Version, Commit: version.Commit,
				APIVersion: version.APIVersion, GoVersion: runtime.Version()}
			// Never start the daemon just to print a version.
			if v, err := client.New(e.layout.Socket()).Version(c.Context()); err == nil {
				out.Daemon = &v
			}
			if jsonOut {
				return printJSON(e.stdout, out)
			}
			fmt.Fprintf(e.stdout, "banger %s (commit %s, api %s, %s)\n", version.Version, version.Commit, version.APIVersion, runtime.Version())
			if v := out.Daemon; v != nil {
				fmt.Fprintf(e.stdout, "bangerd %s (commit %s, pid %d)\n", v.Version, v.Commit, v.PID)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

func newDoctorCmd(e *env) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that this host can run banger, and how to fix what is missing",
		Long: `Check that this host can run banger. One line per check, PASS / WARN / FAIL,
with a one-line fix; the last line says which hypervisor backend 'auto'
picks and why. Exits non-zero when any check fails. Needs no daemon.`,
		Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := e.config()
			if err != nil {
				return err
			}
			r := doctor.Run(c.Context(), doctor.HostEnv(e.layout, cfg, func() int { return daemon.LockHolder(e.layout.DaemonLock()) }))
			if jsonOut {
				printJSON(e.stdout, r)
			} else {
				fmt.Fprint(e.stdout, doctor.Format(r))
			}
			if r.Failed() {
				return exitError{ExitError}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

func newConfigCmd(e *env) *cobra.Command {
	cmd := group(&cobra.Command{Use: "config", Short: "Show banger's configuration and directories"})
	var jsonOut bool
	show := &cobra.Command{
		Use: "show", Short: "Print the effective configuration and where banger keeps its files", Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := e.config()
			if err != nil {
				return err
			}
			out := configOutput{ConfigFile: e.layout.ConfigFile(), Config: cfg,
				Dirs: map[string]string{"config": e.layout.Config, "state": e.layout.State, "cache": e.layout.Cache, "runtime": e.layout.Runtime}}
			if jsonOut {
				return printJSON(e.stdout, out)
			}
			fmt.Fprintf(e.stdout, "config file: %s\nstate:       %s\ncache:       %s\nruntime:     %s\n\n", e.layout.ConfigFile(), e.layout.State, e.layout.Cache, e.layout.Runtime)
			fmt.Fprintf(e.stdout, "backend = %q\n[vm]\nimage = %q\nvcpus = %d\nmemory_mib = %d\ndisk = %q\n[network]\nsubnet = %q\ndns_port = %d\ndns_domain = %q\negress = %q\nallow = [%s]\n[daemon]\nlog_max_mib = %d\n",
				cfg.Backend, cfg.VM.Image, cfg.VM.VCPUs, cfg.VM.MemoryMiB, cfg.VM.Disk, cfg.Network.Subnet, cfg.Network.DNSPort, cfg.Network.DNSDomain, cfg.Network.Egress, quotedList(cfg.Network.Allow), cfg.Daemon.LogMaxMiB)
			return nil
		},
	}
	show.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	example := &cobra.Command{
		Use: "example", Short: "Print a commented config file with every key and its default", Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			fmt.Fprint(e.stdout, config.Example)
			return nil
		},
	}
	cmd.AddCommand(show, example)
	return cmd
}

// quotedList is a TOML array's inside: "a", "b".
func quotedList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}
