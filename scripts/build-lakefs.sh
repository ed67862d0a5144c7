#!/usr/bin/env bash
# Build a real lakeFS server from the Go module proxy and print the binary's path.
#
# `go install module@version` refuses lakeFS because its go.mod has a replace directive, so the
# module is downloaded, copied into a writable folder and built there. The binary is cached
# outside the repository, keyed by version, so later runs skip the build.
#
# Environment:
#   LAKEFS_VERSION    release to build (default below)
#   FLOWLAKE_CACHE    cache folder (default ~/.cache/flowlake)
set -euo pipefail

version="${LAKEFS_VERSION:-1.86.0}"
cache="${FLOWLAKE_CACHE:-$HOME/.cache/flowlake}"
binary="$cache/lakefs-$version/lakefs"

if [[ -x "$binary" ]]; then
  echo "$binary"
  exit 0
fi

command -v go >/dev/null || { echo "build-lakefs: the Go toolchain is not on PATH" >&2; exit 3; }

work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
module_dir="$(cd "$work" && go mod download -json "github.com/treeverse/lakefs@v$version" \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if "Error" in d else print(d["Dir"])')"

cp -r "$module_dir" "$work/src"
chmod -R u+w "$work/src"
echo "build-lakefs: building lakeFS v$version (first run only; a few minutes)" >&2
(
  cd "$work/src"
  CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X github.com/treeverse/lakefs/pkg/version.Version=$version" \
    -o "$work/lakefs" ./cmd/lakefs
)
mkdir -p "$(dirname "$binary")"
mv "$work/lakefs" "$binary.tmp.$$"
mv "$binary.tmp.$$" "$binary"
echo "$binary"
