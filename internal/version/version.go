// Package version holds the build's version, set with -ldflags at build time.
package version

// Version is the release or git describe of this build.
var Version = "dev"

// Commit is the git commit of this build.
var Commit = "unknown"

// APIVersion is the daemon API's version; the URL prefix is /v1/.
const APIVersion = "v1"
