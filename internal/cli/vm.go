package cli

import "github.com/spf13/cobra"

func addVMCommands(root *cobra.Command, e *env) {}
