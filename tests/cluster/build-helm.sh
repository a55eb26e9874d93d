#!/usr/bin/env bash
# Build helm from its Go module (for rendering charts/mentor in tests), cached outside the
# clone like the control-plane binaries. The last line of stdout is the helm binary's path:
#
#     HELM=$(bash tests/cluster/build-helm.sh | tail -1)
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.21.4}"
exec bash "$(dirname "${BASH_SOURCE[0]}")/../go-install.sh" helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
