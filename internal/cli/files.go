package cli

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newVMCatCmd(e *env) *cobra.Command {
	var jsonOut bool
	var max int64
	cmd := &cobra.Command{
		Use: "cat VM PATH", Short: "Print a file of a running VM (at most 16 MiB)", Args: args(cobra.ExactArgs(2)),
		ValidArgsFunction: e.completeVMs,
		RunE: func(c *cobra.Command, a []string) error {
			if max < 0 {
				return usageError{fmt.Errorf("--max %d: want a positive number of bytes (0: the default)", max)}
			}
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			fc, err := cl.ReadFile(c.Context(), a[0], a[1], max)
			if err != nil {
				return err
			}
			if jsonOut {
				return printJSON(e.stdout, fc)
			}
			if fc.Type == "symlink" {
				return fmt.Errorf("%s is a symlink to %s", fc.Path, fc.Link)
			}
			e.stdout.Write(fc.Data)
			if fc.Truncated {
				fmt.Fprintf(e.stderr, "banger: %s: %d of %d bytes shown\n", fc.Path, len(fc.Data), fc.Size)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the file as JSON (content base64)")
	cmd.Flags().Int64Var(&max, "max", 0, "read at most this many bytes (default and limit: 16 MiB)")
	return cmd
}

func newVMPutCmd(e *env) *cobra.Command {
	var mode string
	cmd := &cobra.Command{
		Use: "put VM PATH [FILE]", Short: "Write FILE (or stdin) as a file of a running VM", Args: args(cobra.RangeArgs(2, 3)),
		ValidArgsFunction: e.completeVMs,
		RunE: func(c *cobra.Command, a []string) error {
			m, err := strconv.ParseUint(mode, 8, 32)
			if err != nil || m > 0o777 {
				return usageError{fmt.Errorf("--mode %q: want octal permission bits, e.g. 644", mode)}
			}
			src := e.stdin
			var size int64 = -1
			if len(a) == 3 {
				f, err := os.Open(a[2])
				if err != nil {
					return err
				}
				defer f.Close()
				st, err := f.Stat()
				if err != nil {
					return err
				}
				src, size = f, st.Size()
			}
			if size < 0 {
				// stdin: read it whole first (its size goes first).
				tmp, err := os.CreateTemp("", "banger-put-*")
				if err != nil {
					return err
				}
				defer os.Remove(tmp.Name())
				defer tmp.Close()
				if size, err = io.Copy(tmp, src); err != nil {
					return err
				}
				tmp.Seek(0, io.SeekStart)
				src = tmp
			}
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			if err := cl.WriteFile(c.Context(), a[0], a[1], src, size, uint32(m)); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s:%s %d bytes\n", a[0], a[1], size)
			return nil
		},
	}
	cmd.Flags().StringVar(&mode, "mode", "644", "permission bits of the file (octal)")
	return cmd
}

func newVMDirCmd(e *env) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use: "dir VM [PATH]", Short: "List a directory of a running VM (default /root)", Args: args(cobra.RangeArgs(1, 2)),
		ValidArgsFunction: e.completeVMs,
		RunE: func(c *cobra.Command, a []string) error {
			p := "/root"
			if len(a) == 2 {
				p = a[1]
			}
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			l, err := cl.ListDir(c.Context(), a[0], p)
			if err != nil {
				return err
			}
			if jsonOut {
				return printJSON(e.stdout, l)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			for _, en := range l.Entries {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", en.Type, en.Mode, humanSize(en.Size), en.ModTime.Local().Format("2006-01-02 15:04"), en.Name)
			}
			tw.Flush()
			if l.Truncated {
				fmt.Fprintf(e.stderr, "banger: %s: listing cut at %d entries\n", l.Path, len(l.Entries))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}
