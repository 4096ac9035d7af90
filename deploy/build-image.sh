#!/usr/bin/env bash
# Build the voice-server-moshi image (deploy/Dockerfile; docs/deployment.md).
#
#   deploy/build-image.sh                 # CPU image on a locally made Debian base
#   BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04 PY_VERSION=3.12 deploy/build-image.sh
#
# Steps, each cached under $CACHE_DIR so a second build is fast:
#   1. the base: BASE_IMAGE if given, else Debian bookworm made with
#      `debootstrap --variant=minbase` (tarball cached) and `podman import`ed;
#   2. the wheelhouse: every dependency of voice-server-moshi[$EXTRAS] (manylinux wheels
#      up to glibc 2.36, bookworm's), resolved from pyproject.toml's ranges by the host's
#      pip (its index and proxy settings apply; the build itself needs no PyPI), one
#      directory per resolution input;
#   3. `podman build` (or $CONTAINER_CLI) with the wheelhouse as the `wheels` context.
# Prints the image name and its size on the last two lines of stdout.
#
# Environment: IMAGE (default localhost/voice-server-moshi:<version>), BASE_IMAGE,
# PY_VERSION (the base's python3, default 3.11), EXTRAS (default embedded,cluster),
# PIP_DOWNLOAD_ARGS (extra `pip download` flags, e.g.
# "--extra-index-url https://download.pytorch.org/whl/cpu" for a CPU-only torch),
# CACHE_DIR (default ~/.cache/voice-server-moshi/image), PYTHON (the host's, default
# python3), CONTAINER_CLI (default podman), PODMAN_ARGS (global podman flags; default
# "--cgroup-manager=cgroupfs --runtime=runc" where crun cannot run).
# Nothing secret goes into the build: serve reads its token from a file mounted at run time.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

PYTHON="${PYTHON:-python3}"
CLI="${CONTAINER_CLI:-podman}"
PY_VERSION="${PY_VERSION:-3.11}"
EXTRAS="${EXTRAS:-embedded,cluster}"
CACHE_DIR="${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/voice-server-moshi/image}"
version="$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
IMAGE="${IMAGE:-localhost/voice-server-moshi:$version}"
# shellcheck disable=SC2206
podman_args=(${PODMAN_ARGS-})
if [ "$CLI" = podman ] && [ -z "${PODMAN_ARGS+x}" ] && command -v runc >/dev/null; then
    podman_args=(--cgroup-manager=cgroupfs --runtime=runc)
fi
cli() { "$CLI" "${podman_args[@]}" "$@"; }
step() { echo "build-image: $*" >&2; }
mkdir -p "$CACHE_DIR"
start=$SECONDS
# One build at a time per cache (CI starts one in the background, the test calls it again:
# the second waits here, then finds everything cached).
exec 9>"$CACHE_DIR/.lock"
flock 9

# 1. the base ----------------------------------------------------------------------------
if [ -z "${BASE_IMAGE:-}" ]; then
    BASE_IMAGE=localhost/voice-server-moshi-base:bookworm
    tarball="$CACHE_DIR/debian-bookworm-minbase.tar"
    if ! cli image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        if [ ! -s "$tarball" ]; then
            command -v debootstrap >/dev/null || {
                echo "build-image: debootstrap is needed for the local base (apt-get install" \
                     "debootstrap) or give BASE_IMAGE" >&2; exit 2; }
            step "debootstrap bookworm (minbase) -> $tarball"
            root="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
            trap 'rm -rf "$root"' EXIT
            debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >&2
            # minbase lists only the release; security fixes come from these two.
            printf '%s\n' "deb http://deb.debian.org/debian bookworm main" \
                "deb http://deb.debian.org/debian bookworm-updates main" \
                "deb http://deb.debian.org/debian-security bookworm-security main" \
                > "$root/etc/apt/sources.list"
            rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
            tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
            rm -rf "$root"; trap - EXIT
        fi
        step "import $tarball as $BASE_IMAGE"
        cli import --change 'CMD ["/bin/bash"]' "$tarball" "$BASE_IMAGE" >/dev/null
    fi
fi

# 2. the wheelhouse ----------------------------------------------------------------------
# Keyed by what the resolution reads (the dependency tables, not the rest of
# pyproject.toml); a new key resolves afresh (within pyproject's
# ranges, so a later day may pick newer releases: the image records them in
# /opt/venv/requirements.lock).
deps="$("$PYTHON" -c 'import json, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))
print(json.dumps([p["build-system"], p["project"]["dependencies"],
                  p["project"]["optional-dependencies"]], sort_keys=True))')"
key="$(echo "$deps $PY_VERSION $EXTRAS ${PIP_DOWNLOAD_ARGS:-}" | sha256sum | cut -c1-16)"
wheels="$CACHE_DIR/wheels-$key"
if [ ! -f "$wheels/.complete" ]; then
    step "wheelhouse for [$EXTRAS], python $PY_VERSION -> $wheels"
    rm -rf "$wheels" && mkdir -p "$wheels"
    dist="$(mktemp -d)"
    "$PYTHON" -m pip wheel -q --no-deps -w "$dist" . >&2
    platforms=()
    for p in manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 \
             manylinux_2_31 manylinux_2_34 manylinux_2_35 manylinux_2_36; do
        platforms+=(--platform "${p}_x86_64")
    done
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download -q --dest "$wheels" --only-binary=:all: \
        --python-version "$PY_VERSION" --implementation cp "${platforms[@]}" \
        ${PIP_DOWNLOAD_ARGS:-} \
        "voice-server-moshi[$EXTRAS] @ file://$(ls "$dist"/*.whl)" 'setuptools>=77' wheel >&2
    rm -f "$wheels"/voice_server_moshi-*.whl
    rm -rf "$dist"
    touch "$wheels/.complete"
    # Older resolutions are gigabytes each; the new one replaces them.
    find "$CACHE_DIR" -maxdepth 1 -name 'wheels-*' ! -name "wheels-$key" -exec rm -rf {} +
fi
digest="$(ls "$wheels" | sha256sum | cut -c1-16)"

# 3. the image ---------------------------------------------------------------------------
step "build $IMAGE from $BASE_IMAGE ($((SECONDS - start)) s so far)"
build_args=()
# docker format: OCI images have no HEALTHCHECK.
[ "$CLI" = podman ] && build_args=(--format docker --layers)
cli build "${build_args[@]}" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "WHEELS_DIGEST=$digest" \
    --build-arg "EXTRAS=$EXTRAS" --build-context "wheels=$wheels" \
    -f deploy/Dockerfile -t "$IMAGE" . >&2
step "done in $((SECONDS - start)) s"
echo "$IMAGE"
cli image inspect --format '{{.Size}}' "$IMAGE"
