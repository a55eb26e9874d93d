#!/usr/bin/env bash
# Build the MinIO server from its Go module (a real S3 endpoint on loopback for the storage
# tests), cached outside the clone like the control-plane binaries. The last line of stdout
# is the minio binary's path:
#
#     MINIO=$(bash tests/storage/build-minio.sh | tail -1)
#
# MinIO tags its releases RELEASE.<date>, which are not semver; the Go module proxy serves
# them as pseudo-versions. MINIO_VERSION overrides the pinned one.
set -euo pipefail

MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
# Version stamps as MinIO's buildscripts/gen-ldflags.go sets them, from the pseudo-version
# (v0.0.0-YYYYMMDDhhmmss-<commit>); `minio --version` then names what was built.
ldflags=""
if [[ "$MINIO_VERSION" =~ ^v0\.0\.0-([0-9]{4})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})-([0-9a-f]{12})$ ]]; then
    m=("${BASH_REMATCH[@]}")
    p=github.com/minio/minio/cmd
    ldflags+="-X $p.Version=${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}Z"
    ldflags+=" -X $p.ReleaseTag=DEVELOPMENT.${m[1]}-${m[2]}-${m[3]}T${m[4]}-${m[5]}-${m[6]}Z"
    ldflags+=" -X $p.CommitID=${m[7]} -X $p.ShortCommitID=${m[7]} -X $p.CopyrightYear=${m[1]}"
fi
exec bash "$(dirname "${BASH_SOURCE[0]}")/../go-install.sh" minio github.com/minio/minio "$MINIO_VERSION" "$ldflags"
