#!/usr/bin/env bash
# Build the CPU images of the compose stack where no image registry is reachable (CI does this):
#   bash deploy/build-cpu-images.sh [VENV]
# 1. a Debian base image from the apt mirror this machine uses (debootstrap --variant=minbase, docker import);
# 2. alignmesh:cpu on it (deploy/Dockerfile.cpu), installing from wheels gathered here first (offline build);
# 3. alignmesh-prometheus:cpu on it, with this machine's Prometheus binary (Debian's prometheus package).
# Needs a running Docker daemon (e.g. `dockerd --bridge=none --iptables=false`: the stack uses host networking).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
source deploy/retry.sh  # retry CMD...: up to 3 tries, for installs and downloads
BASE=alignmesh-base:bookworm
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$(mktemp -d)
  retry debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" \
    >/dev/null
  tar -C "$rootfs" -c . | docker import - "$BASE" >/dev/null
  rm -rf "$rootfs"
fi
rm -rf .wheels
retry "$VENV/bin/pip" download -q --resume-retries 20 -d .wheels torch==2.13.0 '.[server]' setuptools wheel
docker build -q --network host -f deploy/Dockerfile.cpu --build-arg BASE="$BASE" -t alignmesh:cpu . >/dev/null
rm -rf .wheels
ctx=$(mktemp -d)
cp "$(command -v prometheus)" "$ctx/prometheus"
docker build -q -f deploy/Dockerfile.prometheus --build-arg BASE="$BASE" -t alignmesh-prometheus:cpu "$ctx" >/dev/null
rm -rf "$ctx"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^alignmesh'
