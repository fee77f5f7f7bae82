#!/usr/bin/env bash
# Builds Beam's Prism runner with infra/prism/listen-host.patch and progress-tick.patch (see their
# headers): Beam's Prism listens on every interface, ours on -job_host (default 127.0.0.1); Beam's
# asks a running bundle for progress every 100 ms, ours every -progress_tick. Called by infra/bootstrap.sh:
#   infra/prism/build.sh <beam version> <binary to write>
# The Beam module comes from the Go module proxy (go mod download, checked against sum.golang.org
# like go install would); a copy of it is patched, and cmd/prism is built from that copy with
# Beam's own go.mod and go.sum, so every dependency is the one `go install ...prism@v<version>` uses.
set -euo pipefail
version=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
module="github.com/apache/beam/sdks/v2@v$version"

dir=$(go mod download -json "$module" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
[ -d "$dir" ] || { echo "go mod download $module gave no module folder" >&2; exit 1; }
src="$(dirname "$out")/prism-src"
rm -rf "$src"
mkdir -p "$src"
# The Go part of the module only (the module also ships Beam's Python and Java sources).
cp -r "$dir/go.mod" "$dir/go.sum" "$dir/go" "$src/"
chmod -R u+w "$src"
for name in listen-host progress-tick; do
  patch -d "$src" -p1 --forward --no-backup-if-mismatch <"$here/$name.patch"
done
(cd "$src" && go build -trimpath -buildvcs=false -o "$out.new" ./go/cmd/prism)
mv "$out.new" "$out"
rm -rf "$src"
