#!/usr/bin/env bash
# Chooses the PgBouncer the platform runs and links it as build/pgbouncer/pgbouncer.
# Called by setup.sh (as root). In order of preference:
#   1. the OS package, once it is 1.26.1 or newer (CVE-2026-107350 is fixed there);
#   2. the newest pgbouncer source package in Debian's archive (a later release's,
#      e.g. trixie or sid) that is 1.26.1 or newer, built here once;
#   3. a PgBouncer that keeps prepared statements in transaction mode (1.21+): the OS
#      package if it is one (Debian 13: 1.24), else Debian 13's source package,
#      with Debian's security patches, built here once (Debian 12);
#   4. the OS package as it is.
# Versions before 1.26.1 run with the mitigation of docs/security.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/debian-source.sh

FIXED=1.26.1             # first PgBouncer without CVE-2026-107350
PREPARED=1.21            # first with max_prepared_statements
ROOT=$PWD/build/pgbouncer
LINK=$ROOT/pgbouncer
mkdir -p "$ROOT"

log() { echo "==> pgbouncer: $*"; }

use() {  # use <binary> <why>
    ln -sfn "$1" "$LINK.new" && mv -T "$LINK.new" "$LINK"
    log "$("$1" --version | head -1) ($2)"
}

build() {  # build <debian version>: prints the binary's path, or fails
    local version=$1 dir=$ROOT/$1
    if [[ -x "$dir/pgbouncer" ]]; then echo "$dir/pgbouncer"; return 0; fi
    local work=$ROOT/.work-$version
    debsrc_unpack pgbouncer "$version" "$work" || { rm -rf "$work"; return 1; }
    debsrc_build_tools libevent-dev libc-ares-dev libssl-dev >&2
    log "building $version from Debian's source package (once)" >&2
    (cd "$work/src" && ./configure --with-cares --without-pam --without-ldap >configure.log 2>&1 \
        && make -j"$(nproc)" >make.log 2>&1) || { log "build of $version failed: see $work" >&2; return 1; }
    mkdir -p "$dir" && install -m 0755 "$work/src/pgbouncer" "$dir/pgbouncer"
    rm -rf "$work"
    echo "$dir/pgbouncer"
}

os_installed=$(dpkg-query -W -f='${Version}' pgbouncer 2>/dev/null || true)
os_candidate=$(apt-cache policy pgbouncer 2>/dev/null | awk '/Candidate:/ {print $2}')

# 1. The OS offers a fixed version: take it.
if [[ -n "$os_candidate" && "$os_candidate" != "(none)" ]] \
        && debsrc_at_least "$(debsrc_upstream "$os_candidate")" "$FIXED"; then
    if [[ "$os_installed" != "$os_candidate" ]]; then
        log "installing the OS package $os_candidate"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
    fi
    use /usr/sbin/pgbouncer "the OS package, not affected by CVE-2026-107350"
    exit 0
fi

if ! debsrc_update; then
    log "Debian's archive cannot be read now; keeping what is here"
    if [[ -L "$LINK" && -x "$LINK" ]]; then use "$(readlink -f "$LINK")" "chosen earlier"; exit 0; fi
    use /usr/sbin/pgbouncer "the OS package"
    exit 0
fi
versions=$(debsrc_versions pgbouncer)

# 2. A fixed version in the archive, newest first.
for version in $versions; do
    debsrc_at_least "$(debsrc_upstream "$version")" "$FIXED" || continue
    if binary=$(build "$version"); then
        use "$binary" "Debian source $version, not affected by CVE-2026-107350"
        exit 0
    fi
    log "source $version is listed but cannot be had (yet)"
done

# 3. Prepared statements in transaction mode.
if [[ -n "$os_installed" ]] && debsrc_at_least "$(debsrc_upstream "$os_installed")" "$PREPARED"; then
    use /usr/sbin/pgbouncer "the OS package"
    exit 0
fi
for version in $versions; do
    debsrc_at_least "$(debsrc_upstream "$version")" "$PREPARED" || continue
    if binary=$(build "$version"); then
        use "$binary" "Debian source $version"
        exit 0
    fi
done

# 4. What the OS has.
use /usr/sbin/pgbouncer "the OS package"
