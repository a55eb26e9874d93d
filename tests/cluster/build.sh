#!/usr/bin/env bash
# Build the binaries of a real Kubernetes control plane for tests, from Go
# modules: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
# (k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3) and kwok
# (sigs.k8s.io/kwok/cmd/kwok).
#
# Binaries land in ${MENTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mentor}/bin/<key>/
# where <key> names the versions. When they are all there already this exits at
# once. The last line of stdout is always the bin dir:
#
#     BIN=$(bash tests/cluster/build.sh | tail -1)
#
# Progress goes to stderr. A build is made in a temporary directory next to
# the final one and renamed into place, so a killed build never looks done.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Versions come from the go.mod files, so the key follows them.
modver() { # file module
    awk -v m="$2" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' "$1"
}
K8S_VERSION="$(modver "$here/k8s/go.mod" k8s.io/kubernetes)"
ETCD_VERSION="$(modver "$here/etcd/go.mod" go.etcd.io/etcd/server/v3)"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
if [[ -z "$K8S_VERSION" || -z "$ETCD_VERSION" ]]; then
    echo "build.sh: cannot read versions from $here/{k8s,etcd}/go.mod" >&2
    exit 1
fi

cache="${MENTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mentor}"
key="k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-kwok-${KWOK_VERSION}"
bin="$cache/bin/$key"
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok)

complete() {
    local b
    for b in "${binaries[@]}"; do
        [[ -x "$bin/$b" ]] || return 1
    done
}

if complete; then
    echo "$bin"
    exit 0
fi

mkdir -p "$cache/bin"
# One build at a time per cache; a second caller waits, then finds it done.
exec 9>"$cache/bin/.build.lock"
flock 9
if complete; then
    echo "$bin"
    exit 0
fi

if ! command -v go >/dev/null; then
    echo "build.sh: 'go' not found on PATH" >&2
    exit 1
fi

tmp="$(mktemp -d "$cache/bin/.tmp-$key.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

export GOTOOLCHAIN=local
export CGO_ENABLED=0
start=$SECONDS
log() { echo "build.sh: [$((SECONDS - start))s] $*" >&2; }

# Version stamps, as the Kubernetes release build sets them (kubectl version,
# /version of the API server).
k8s_minor="${K8S_VERSION#v1.}"
k8s_minor="${k8s_minor%%.*}"
kv=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kv+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor"
    kv+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done

log "etcd $ETCD_VERSION"
(cd "$here/etcd" && GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" \
    -o "$tmp/etcd" go.etcd.io/etcd/server/v3)

log "kwok $KWOK_VERSION"
GOFLAGS= GOBIN="$tmp" go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"

log "kubernetes $K8S_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl)"
(cd "$here/k8s" && GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w$kv" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl)

for b in "${binaries[@]}"; do
    [[ -x "$tmp/$b" ]] || { echo "build.sh: $b missing after build" >&2; exit 1; }
done
chmod 0755 "$tmp"
rm -rf "$bin"
mv "$tmp" "$bin"
trap - EXIT
log "done"
echo "$bin"
