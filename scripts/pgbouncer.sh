#!/usr/bin/env bash
# Chooses the PgBouncer the platform runs and links it as build/pgbouncer/pgbouncer.
# Called by setup.sh (as root). In order of preference:
#   1. the OS package, once it is 1.26.1 or newer (CVE-2026-107350 is fixed there);
#   2. the newest pgbouncer *source* package in Debian's archive (a later release's,
#      e.g. trixie or sid) that is 1.26.1 or newer, built here once;
#   3. a PgBouncer that keeps prepared statements in transaction mode (1.21+): the OS
#      package if it is one (Debian 13: 1.24), else Debian 13's source package,
#      with Debian's security patches, built here once (Debian 12);
#   4. the OS package as it is.
# Sources come through a private apt state under build/apt: the system's sources
# and packages are left as they are, and no other release's binaries are installed.
# Versions before 1.26.1 run with the mitigation of docs/security.md.
set -euo pipefail
cd "$(dirname "$0")/.."

FIXED=1.26.1             # first PgBouncer without CVE-2026-107350
PREPARED=1.21            # first with max_prepared_statements
ROOT=$PWD/build/pgbouncer
APT=$PWD/build/apt
LINK=$ROOT/pgbouncer
RECHECK_SECONDS=${DBAAS_PGBOUNCER_RECHECK:-86400}   # look at the archive once a day
mkdir -p "$ROOT"

log() { echo "==> pgbouncer: $*"; }
at_least() { dpkg --compare-versions "$1" ge "$2~"; }   # "~": 1.26.1~rc1 counts as 1.26.1
upstream() { local v=${1#*:}; echo "${v%%-*}"; }

use() {  # use <binary> <why>
    ln -sfn "$1" "$LINK.new" && mv -T "$LINK.new" "$LINK"
    log "$("$1" --version | head -1) ($2)"
}

os_installed=$(dpkg-query -W -f='${Version}' pgbouncer 2>/dev/null || true)
os_candidate=$(apt-cache policy pgbouncer 2>/dev/null | awk '/Candidate:/ {print $2}')

# 1. The OS offers a fixed version: take it.
if [[ -n "$os_candidate" && "$os_candidate" != "(none)" ]] && at_least "$os_candidate" "$FIXED"; then
    if [[ "$os_installed" != "$os_candidate" ]]; then
        log "installing the OS package $os_candidate"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
    fi
    use /usr/sbin/pgbouncer "the OS package, not affected by CVE-2026-107350"
    exit 0
fi

# A build made earlier, still good enough, and looked at recently: keep it.
stamp=$ROOT/.checked
if [[ -L "$LINK" && -x "$LINK" && -f "$stamp" ]] \
        && (( $(date +%s) - $(stat -c %Y "$stamp") < RECHECK_SECONDS )); then
    log "$("$LINK" --version | head -1) (chosen $(date -r "$stamp" +%F))"
    exit 0
fi

# 2 and 3 read Debian's archive: the source indexes of the releases after this one.
APT_OPTS=(-o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache"
          -o APT::Sandbox::User=root)
sources_of() {
    mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
    cat > "$APT/sources.list" <<EOF
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security trixie-security main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian testing main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
EOF
    apt-get "${APT_OPTS[@]}" update -qq >/dev/null 2>&1 || return 1
    apt-cache "${APT_OPTS[@]}" showsrc pgbouncer 2>/dev/null \
        | awk '/^Version:/ {print $2}' | sort -u | sort -rV
}

build() {  # build <debian version>: prints the binary's path, or fails
    local version=$1 dir=$ROOT/$1
    if [[ -x "$dir/pgbouncer" ]]; then echo "$dir/pgbouncer"; return 0; fi
    local work=$ROOT/.work-$version
    rm -rf "$work" && mkdir -p "$work"
    (cd "$work" && apt-get "${APT_OPTS[@]}" source --download-only "pgbouncer=$version" \
        >/dev/null 2>&1) || { rm -rf "$work"; return 1; }
    log "building $version from Debian's source package (once)" >&2
    (cd "$work" && dpkg-source -x ./*.dsc src >/dev/null 2>&1 \
        && cd src && ./configure --with-cares --without-pam --without-ldap >configure.log 2>&1 \
        && make -j"$(nproc)" >make.log 2>&1) || { log "build of $version failed: see $work" >&2; return 1; }
    mkdir -p "$dir" && install -m 0755 "$work/src/pgbouncer" "$dir/pgbouncer"
    rm -rf "$work"
    echo "$dir/pgbouncer"
}

if ! versions=$(sources_of); then
    log "Debian's archive cannot be read now; keeping what is here"
    if [[ -L "$LINK" && -x "$LINK" ]]; then use "$(readlink -f "$LINK")" "built earlier"; exit 0; fi
    use /usr/sbin/pgbouncer "the OS package"
    exit 0
fi
touch "$stamp"

# Build tools, only when a build is wanted.
need_tools() {
    local missing=()
    for pkg in build-essential dpkg-dev pkg-config libevent-dev libc-ares-dev libssl-dev; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "installing build tools: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# 2. A fixed version in the archive, newest first.
for version in $versions; do
    at_least "$(upstream "$version")" "$FIXED" || continue
    need_tools
    if binary=$(build "$version"); then
        use "$binary" "Debian source $version, not affected by CVE-2026-107350"
        exit 0
    fi
    log "source $version is listed but cannot be had (yet)"
done

# 3. Prepared statements in transaction mode.
if [[ -n "$os_installed" ]] && at_least "$(upstream "$os_installed")" "$PREPARED"; then
    use /usr/sbin/pgbouncer "the OS package"
    exit 0
fi
for version in $versions; do
    at_least "$(upstream "$version")" "$PREPARED" || continue
    need_tools
    if binary=$(build "$version"); then
        use "$binary" "Debian source $version"
        exit 0
    fi
done

# 4. What the OS has.
use /usr/sbin/pgbouncer "the OS package"
