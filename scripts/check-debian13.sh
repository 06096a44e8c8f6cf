#!/usr/bin/env bash
# Runs this checkout's `make setup-test` and `make test` on a fresh Debian 13
# (trixie) made with debootstrap, from a Debian 12 or 13 host, as root:
#
#   scripts/check-debian13.sh [ROOT]      (default /var/tmp/dbaas-trixie)
#
# The root is a fresh debootstrap each time (its tarball is kept next to it to
# save the download). Setup runs with the host's network (package registries);
# the tests run in a network namespace of their own (loopback only), so they can
# run beside a `make run` on the host. The command is entered with pivot_root in
# a mount namespace of its own, not a plain chroot: bubblewrap cannot make its
# namespaces from inside a chroot. Everything started inside is stopped at the
# end. Logs: ROOT.setup.log, ROOT.test.log. See docs/debian13.md.
set -euo pipefail
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
ROOT=$(readlink -m "${1:-/var/tmp/dbaas-trixie}")
TARBALL=$ROOT.tar
SRC=$(cd "$(dirname "$0")/.." && pwd)

if [[ ! -f $TARBALL ]]; then
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
    rm -rf "$ROOT"
    # What a Debian 13 cloud image has, plus make and git to get and run the project.
    debootstrap --include=ca-certificates,make,git,sudo,python3,python3-venv,procps,iproute2,curl \
        trixie "$ROOT" http://deb.debian.org/debian
    cat > "$ROOT/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -f "$ROOT/etc/apt/sources.list"
    # No init here: packages must not try to start their services.
    printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
    chmod +x "$ROOT/usr/sbin/policy-rc.d"
    tar -C "$ROOT" -cf "$TARBALL" .
else
    rm -rf "$ROOT" && mkdir -p "$ROOT" && tar -C "$ROOT" -xf "$TARBALL"
fi
git clone -q "$SRC" "$ROOT/root/dbaas"
echo "==> testing $(git -C "$SRC" rev-parse --short HEAD) on $(cat "$ROOT/etc/debian_version")"

# inside <netns: host|isolated> <command>: run a shell command in the root.
inside() {
    local net=() cmd=$2
    [[ $1 == isolated ]] && net=(--net)
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
    # A host that re-signs HTTPS with a CA of its own: trust it inside too.
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/" \
        2>/dev/null || true
    unshare --mount "${net[@]}" --propagation private --fork -- /bin/sh -c '
        set -e
        R=$0
        mount --bind "$R" "$R"
        mount -t proc proc "$R/proc"
        mount --rbind /sys "$R/sys" && mount --make-rslave "$R/sys"
        mount --rbind /dev "$R/dev" && mount --make-rslave "$R/dev"
        mount -t tmpfs -o mode=0755 tmpfs "$R/run"
        [ -n "$2" ] && ip link set lo up
        cd "$R" && mkdir -p mnt && pivot_root . mnt
        exec /usr/sbin/chroot . /bin/sh -c "umount -l /mnt; update-ca-certificates >/dev/null 2>&1 || true;
            cd /root/dbaas && exec env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            TERM=xterm sh -c \"\$0\"" "$1"
    ' "$ROOT" "$cmd" "${net[*]}"
}

stop_inside() {  # every process whose root is the test root
    local want pid
    want=$(stat -c %d:%i "$ROOT")
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        [[ $(stat -Lc %d:%i "/proc/$pid/root" 2>/dev/null) == "$want" ]] && kill -9 "$pid" 2>/dev/null
    done
    true
}
trap stop_inside EXIT

status=0
SECONDS=0
inside host "make setup-test" > "$ROOT.setup.log" 2>&1 || status=$?
echo "==> make setup-test: exit $status in ${SECONDS}s (log $ROOT.setup.log)"
if ((status == 0)); then
    SECONDS=0
    inside isolated "make test" > "$ROOT.test.log" 2>&1 || status=$?
    echo "==> make test: exit $status in ${SECONDS}s (log $ROOT.test.log)"
    grep -E "^(FAILED|ERROR)|passed|failed" "$ROOT.test.log" | tail -20
fi
exit "$status"
