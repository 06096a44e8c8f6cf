#!/usr/bin/env bash
# The kernel of the microvm runtime's guests, built from Debian's own kernel
# source (the `linux-source` package of this release) with only what a guest uses
# built in: unikernel_images/guest-kernel.config over `make allnoconfig`. The
# result is build/guest-kernel/<source version>-<config hash>/vmlinux (an ELF that
# QEMU boots through its PVH entry); the host's own kernel and boot loader are not
# touched. ~2.5 min on 2 cores, once: nothing is built when that directory exists.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/debian-source.sh

DEST=${DBAAS_GUEST_KERNEL_DIR:-build/guest-kernel}
CONFIG=unikernel_images/guest-kernel.config

debsrc_build_tools linux-source flex bison bc libelf-dev libssl-dev
tarball=$(find /usr/src -maxdepth 1 -name 'linux-source-*.tar.xz' | sort -V | tail -1)
if [[ -z "$tarball" ]]; then
    echo "guest-kernel: no /usr/src/linux-source-*.tar.xz (the linux-source package)" >&2
    exit 1
fi
version=$(dpkg-query -W -f='${Version}' linux-source)
name="$version-$(sha256sum "$CONFIG" | cut -c1-12)"
if [[ -f "$DEST/$name/vmlinux" ]]; then
    exit 0
fi

echo "==> building the guest kernel $name (a few minutes, once)"
mkdir -p "$DEST"
work=$(mktemp -d "$DEST/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
tar -xf "$tarball" -C "$work"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -1)
make -s -C "$src" allnoconfig KCONFIG_ALLCONFIG="$PWD/$CONFIG" >"$work/config.log" 2>&1
missing=()
while read -r symbol; do
    grep -qx "$symbol=y" "$src/.config" || missing+=("$symbol")
done < <(sed -n 's/^\(CONFIG_[A-Z0-9_]*\)=y$/\1/p' "$CONFIG")
if ((${#missing[@]})); then
    echo "guest-kernel: $(basename "$src") cannot have: ${missing[*]}" >&2
    exit 1
fi
if ! make -s -C "$src" -j"$(nproc)" vmlinux >"$work/build.log" 2>&1; then
    tail -20 "$work/build.log" >&2
    echo "guest-kernel: the build failed" >&2
    exit 1
fi
staging="$DEST/.$name.partial"
rm -rf "$staging"
mkdir -p "$staging"
mv "$src/vmlinux" "$staging/vmlinux"
cp "$src/.config" "$staging/config"
echo "$version" >"$staging/source-version"
rm -rf "${DEST:?}/$name"
mv "$staging" "$DEST/$name"
echo "==> guest kernel $name in $DEST/$name"
