#!/usr/bin/env bash
# Build helm from its Go module (for rendering charts/mentor in tests), cached outside the
# clone like the control-plane binaries. The last line of stdout is the helm binary's path:
#
#     HELM=$(bash tests/cluster/build-helm.sh | tail -1)
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.21.4}"
cache="${MENTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mentor}"
dir="$cache/bin/helm-$HELM_VERSION"

if [[ -x "$dir/helm" ]]; then
    echo "$dir/helm"
    exit 0
fi
mkdir -p "$cache/bin"
exec 9>"$cache/bin/.build-helm.lock"
flock 9
if [[ ! -x "$dir/helm" ]]; then
    tmp="$(mktemp -d "$cache/bin/.tmp-helm.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    echo "build-helm.sh: building helm $HELM_VERSION" >&2
    GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS= GOBIN="$tmp" go install -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    trap - EXIT
fi
echo "$dir/helm"
