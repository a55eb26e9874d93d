#!/usr/bin/env bash
# Print (as the last line of stdout) the path of a ready virtualenv for this checkout.
#
# The virtualenv is built from uv.lock with every extra, lives OUTSIDE the clone under
#   ${MENTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mentor}/venvs/<key>
# and is keyed by sha256(uv.lock + pyproject.toml + uv version) and the Python version, so
# CI on the same machine reuses it and a fresh machine builds it from scratch. uv's own
# download cache stays in uv's default cache dir, so a rebuild reuses downloaded wheels.
#
# The project itself is installed editable. Its import path points at the checkout that
# last ran this script (recorded in <venv>/.mentor-src); when a different checkout (CI clones
# to a fresh directory) runs it, the editable install is re-pointed with a cheap
# `uv sync --frozen` (a few seconds, no downloads).
#
# Environment:
#   MENTOR_CACHE    cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/mentor)
#   MENTOR_PYTHON   Python interpreter to build the venv with (default: python3.11, python3)
#   MENTOR_VENV_KEEP  how many venvs to keep under venvs/ (default 2)
set -euo pipefail

UV_VERSION=0.13.9   # keep equal to [tool.uv] required-version in pyproject.toml

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cache=${MENTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mentor}
venvs=$cache/venvs
keep=${MENTOR_VENV_KEEP:-2}

log() { printf '[env.sh] %s\n' "$*" >&2; }

# --- python --------------------------------------------------------------------------
py=${MENTOR_PYTHON:-}
if [[ -z $py ]]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1; then py=$(command -v "$cand"); break; fi
  done
fi
[[ -n $py ]] || { log "no python3 found (set MENTOR_PYTHON)"; exit 1; }
# Resolve pyenv shims and the like to the real interpreter.
{ read -r py; read -r pyver; } < <("$py" -c 'import sys, platform; print(sys.executable); print(platform.python_version())')
[[ -n ${pyver:-} ]] || { log "cannot run $py"; exit 1; }

# --- key -----------------------------------------------------------------------------
hash=$( { cat "$root/uv.lock" "$root/pyproject.toml"; printf 'uv=%s\n' "$UV_VERSION"; } \
        | sha256sum | cut -c1-16)
key="$hash-py$pyver"
venv=$venvs/$key
marker=$venv/.mentor-complete
srcfile=$venv/.mentor-src

# --- fast path -----------------------------------------------------------------------
if [[ -f $marker && -f $srcfile && "$(<"$srcfile")" == "$root" ]]; then
  touch "$marker"   # most recently used; pruning keeps the newest
  echo "$venv"
  exit 0
fi

# --- uv of the pinned version ----------------------------------------------------------
ensure_uv() {
  local have
  if have=$(uv --version 2>/dev/null) && [[ $have == "uv $UV_VERSION"* ]]; then
    command -v uv; return
  fi
  local dir=$cache/tools/uv-$UV_VERSION
  if [[ ! -x $dir/bin/uv ]]; then
    log "installing uv $UV_VERSION into $dir"
    mkdir -p "$cache/tools"
    local tmp
    tmp=$(mktemp -d "$cache/tools/.uv-$UV_VERSION.XXXXXX")
    "$py" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
      --target "$tmp" "uv==$UV_VERSION" >&2
    rm -rf "$dir"
    mv "$tmp" "$dir"
  fi
  echo "$dir/bin/uv"
}

# --- build / re-point under a lock -----------------------------------------------------
mkdir -p "$venvs"
exec 9>"$venvs/.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi   # one builder at a time per machine

uv=$(ensure_uv)
export UV_PYTHON_DOWNLOADS=never    # only PyPI is reachable; use the local interpreter
export UV_NO_PROGRESS=1
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
export DS_BUILD_OPS=0               # deepspeed: never pre-compile CUDA/C++ ops at install time
unset VIRTUAL_ENV || true

uv_sync() {  # uv_sync <venv-dir> [uv sync options]: install the locked env with every extra
  local dir=$1; shift
  UV_PROJECT_ENVIRONMENT=$dir "$uv" sync --frozen --all-extras --python "$py" \
    --project "$root" "$@" >&2
}

if [[ ! -f $marker ]]; then
  # Any leftover temp dir is from a killed build (builds hold the lock): drop it.
  rm -rf "$venvs"/.tmp-* "$venv"
  tmp=$(mktemp -d "$venvs/.tmp-$key.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # A pyproject.toml edited without re-locking must fail loudly, not install stale pins.
  "$uv" lock --check --python "$py" --project "$root" >&2 \
    || { log "uv.lock does not match pyproject.toml: run '$uv lock' and commit uv.lock"; exit 1; }
  log "building $venv (python $pyver, uv $UV_VERSION); this takes a while on a fresh machine"
  start=$SECONDS
  # --relocatable: entry-point scripts use relative paths, so the venv still works after
  # the rename below.
  "$uv" venv --relocatable --python "$py" --quiet "$tmp" >&2
  # No --compile-bytecode: compiling all of site-packages doubles a cold build (~75 s
  # here); Python writes .pyc for what is actually imported on first use instead.
  uv_sync "$tmp"
  printf '%s\n' "$root" >"$tmp/.mentor-src"
  printf 'key=%s\nbuilt=%s\nuv=%s\n' "$key" "$(date -u +%FT%TZ)" "$UV_VERSION" >"$tmp/.mentor-complete"
  mv "$tmp" "$venv"
  trap - EXIT
  log "built in $((SECONDS - start))s"
elif [[ "$(cat "$srcfile" 2>/dev/null || true)" != "$root" ]]; then
  log "re-pointing the editable install of mentor at $root"
  uv_sync "$venv"
  printf '%s\n' "$root" >"$srcfile.new" && mv "$srcfile.new" "$srcfile"
fi
touch "$marker"

# --- prune: keep the $keep most recently used venvs (never the current one) -------------
mapfile -t old < <(cd "$venvs" && ls -1dt -- */.mentor-complete 2>/dev/null \
                   | sed 's#/\.mentor-complete$##' | grep -vxF -- "$key" | tail -n +"$keep" || true)
for d in "${old[@]}"; do
  [[ -n $d ]] || continue
  log "pruning old venv $venvs/$d"
  rm -rf -- "${venvs:?}/$d"
done

echo "$venv"
