#!/usr/bin/env bash
# The kernel of the microvm runtime's guests: Debian's own `linux-image-amd64`
# (the cloud flavour has no 9p, which the guest reads its image and data over),
# downloaded as a package and unpacked under build/guest-kernel/<release>/, never
# installed: the host's own kernel and boot loader stay as they are. Only the
# kernel image and the module directories a guest can need are kept; the image
# builder (unikernel_images/guest.py) picks the modules and their dependencies.
# Idempotent: nothing is fetched when the newest release is there already.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${DBAAS_GUEST_KERNEL_DIR:-build/guest-kernel}
package=$(apt-cache depends linux-image-amd64 2>/dev/null \
    | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [[ -z "$package" ]]; then
    echo "guest-kernel: no linux-image-amd64 in the package lists (apt-get update?)" >&2
    exit 1
fi
release=${package#linux-image-}
if [[ -f "$DEST/$release/vmlinuz" ]]; then
    exit 0
fi

echo "==> fetching the guest kernel $package"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt's download user writes here
(cd "$work" && apt-get download -qq "$package" >/dev/null 2>&1) || {
    echo "guest-kernel: could not download $package" >&2
    exit 1
}
mkdir -p "$work/root"
# Debian 12 ships modules under /lib/modules, Debian 13 under /usr/lib/modules.
dpkg-deb --fsys-tarfile "$work"/*.deb | tar -x -C "$work/root" --wildcards \
    './boot/vmlinuz-*' \
    '*/modules/*/modules.builtin' \
    '*/modules/*/kernel/fs/*' \
    '*/modules/*/kernel/net/*' \
    '*/modules/*/kernel/lib/*' \
    '*/modules/*/kernel/drivers/virtio/*' \
    '*/modules/*/kernel/drivers/net/*' \
    '*/modules/*/kernel/drivers/char/*' 2>/dev/null || true
modules=$(find "$work/root" -type d -path "*/modules/$release" | head -1)
if [[ ! -f "$work/root/boot/vmlinuz-$release" || -z "$modules" ]]; then
    echo "guest-kernel: $package has no vmlinuz-$release or modules" >&2
    exit 1
fi
staging="$DEST/.$release.partial"
rm -rf "$staging"
mkdir -p "$staging"
mv "$work/root/boot/vmlinuz-$release" "$staging/vmlinuz"
mv "$modules" "$staging/modules"
echo "$package" >"$staging/package"
rm -rf "${DEST:?}/$release"
mv "$staging" "$DEST/$release"
echo "==> guest kernel $release in $DEST/$release"
