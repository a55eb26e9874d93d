#!/usr/bin/env bash
# Build one Go command from its module, cached outside the clone:
#     bash tests/go-install.sh NAME MODULE/cmd/path VERSION [LDFLAGS]
# installs into ${MENTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mentor}/bin/NAME-VERSION/NAME
# and prints that path as the last line of stdout; a no-op when it is there already. The
# build goes to a temporary directory renamed into place, so a killed build never looks done.
set -euo pipefail

name="$1" package="$2" version="$3" ldflags="${4:-}"
cache="${MENTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mentor}"
dir="$cache/bin/$name-$version"

if [[ -x "$dir/$name" ]]; then
    echo "$dir/$name"
    exit 0
fi
mkdir -p "$cache/bin"
# One build at a time per tool; a second caller waits, then finds it done.
exec 9>"$cache/bin/.build-$name.lock"
flock 9
if [[ ! -x "$dir/$name" ]]; then
    command -v go >/dev/null || { echo "go-install.sh: 'go' not found on PATH" >&2; exit 1; }
    tmp="$(mktemp -d "$cache/bin/.tmp-$name.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    start=$SECONDS
    echo "go-install.sh: building $name $version" >&2
    GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS= GOBIN="$tmp" go install -trimpath \
        -ldflags "-s -w $ldflags" "$package@$version"
    [[ -x "$tmp/$name" ]] || { echo "go-install.sh: $name missing after build" >&2; exit 1; }
    chmod 0755 "$tmp"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    trap - EXIT
    echo "go-install.sh: built $name in $((SECONDS - start))s" >&2
fi
echo "$dir/$name"
