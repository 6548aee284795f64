#!/bin/sh
# A Debian bookworm base image with Python 3.11, made locally with debootstrap and imported
# into Docker: for builds where no registry can be pulled from (the Dockerfile's default base,
# python:3.11-slim, is pulled). Usage: images/debian-base.sh [name] (default loopline-base).
# Needs root, debootstrap and a Docker engine; takes a few minutes, once.
set -eu
name="${1:-loopline-base}"
docker="${DOCKER:-/usr/bin/docker}"
if "$docker" image inspect "$name" >/dev/null 2>&1; then
    echo "$name exists"
    exit 0
fi
mirror="${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)}"
mirror="${mirror:-http://deb.debian.org/debian}"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$mirror"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | "$docker" import - "$name"
echo "$name imported"
