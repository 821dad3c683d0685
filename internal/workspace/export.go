package workspace

// exportScript runs in the guest, in the workspace (its only argument, $1).
// It prints the diff between the shipped tree (BaseRef) and the work tree
// as a binary git patch.
//
//   - It works on a temporary index, a copy of banger-base.index (the base
//     tree with the stat data of the shipped files): the user's index,
//     commits, branches and stashes in the guest do not matter, only the
//     work tree does.
//   - `git add -N -A` records new (untracked, not ignored) files as
//     intent-to-add, writing no object; `git diff BASE` then compares the
//     base tree with the work tree, reading changed files directly, and
//     the stat data makes unchanged files free. Staging with `git add -A`
//     and `git diff --cached` gives the same bytes, 3x slower (it writes a
//     blob per changed file).
//   - The temporary index lives INSIDE the git dir: git writes an index by
//     lockfile + rename next to the target, and a target on another
//     filesystem than .git (a tmpfs /tmp) fails with "unable to write new
//     index file" (the seed's export bug).
//   - Every option that config could change is pinned on the command line
//     (prefixes, renames, colour, external diff, textconv, context).
//   - Renames are detected (-M). git apply cannot apply a patch that
//     renames a symlink and puts a directory at its old name, so a patch
//     with renames is checked (git apply --cached --check on the base) and
//     made again without rename detection when it fails.
//
// Exit status: 0 with the patch (possibly empty) on stdout; 3 when the
// directory is not a banger workspace; git's own status otherwise.
const exportScript = `set -eu
cd -- "$1"
gd=$(git rev-parse --absolute-git-dir)
base=$(git rev-parse -q --verify 'refs/banger/base^{commit}') || {
	echo "banger export: $1 has no refs/banger/base: not a banger workspace" >&2
	exit 3
}
idx="$gd/banger-export-$$.index"
chk="$gd/banger-export-$$.check"
out="$gd/banger-export-$$.patch"
trap 'rm -f "$idx" "$idx.lock" "$chk" "$chk.lock" "$out"' EXIT
trap 'exit 130' INT TERM HUP
g() {
	GIT_INDEX_FILE="$idx" GIT_OPTIONAL_LOCKS=0 git -c core.checkStat=minimal -c core.trustctime=false \
		-c core.fsmonitor=false -c core.splitIndex=false -c core.untrackedCache=false \
		-c core.quotePath=true -c core.autocrlf=false -c diff.noprefix=false \
		-c diff.mnemonicPrefix=false -c diff.relative=false -c diff.external= "$@"
}
if [ -f "$gd/banger-base.index" ]; then
	cp "$gd/banger-base.index" "$idx"
else
	g read-tree "$base"
fi
g add -N -A
mkpatch() {
	g diff --binary --full-index --unified=3 --no-color --no-ext-diff \
		--no-textconv --submodule=short --src-prefix=a/ --dst-prefix=b/ "$@" "$base" --
}
mkpatch -M >"$out"
# git apply refuses a rename of a symlink whose old name becomes a
# directory ("beyond a symbolic link"): check patches with renames, and
# fall back to no rename detection when they do not apply.
if grep -q '^rename from ' "$out"; then
	rm -f "$chk"
	if ! { GIT_INDEX_FILE="$chk" git read-tree "$base" &&
		GIT_INDEX_FILE="$chk" git apply --cached --check --whitespace=nowarn "$out"; } 2>/dev/null; then
		mkpatch --no-renames >"$out"
	fi
fi
cat "$out"
`

// ExportCommand is the argv to run in the guest (as root, any working
// directory) to export the workspace at path: its stdout is the patch to
// pass to ParsePatch, its stderr a message for people. It needs sh, cp, grep
// and git in the guest. Run it with a cancellable context: stop it when
// ParsePatch refuses the output (too large), or it blocks writing.
func ExportCommand(path string) []string {
	return []string{"sh", "-c", exportScript, "banger-export", path}
}
