// Command banger is the CLI; see internal/cli.
package main

import (
	"os"

	"github.com/banger-sh/banger/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }
