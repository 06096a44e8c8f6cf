#!/usr/bin/env bash
# What the instance images need beyond PostgreSQL's own packages, for every
# PostgreSQL major installed here. Called by setup.sh (as root).
#   - the platform's module (unikernel_images/pg_module), built against
#     postgresql-server-dev-<major> into build/extensions whenever its source changes;
# and the extensions tenants may create beyond PostgreSQL's contrib set, PostGIS
# and pgvector:
#   - from the OS's packages when it has them (postgresql-<major>-postgis-3; Debian
#     13 also has postgresql-17-pgvector);
#   - pgvector otherwise from Debian's source package of a later release (Debian 12:
#     trixie's 0.8.0), built once against postgresql-server-dev-<major> and installed
#     under build/extensions (never into the system's directories), where the image
#     builder (unikernel_images/image.py) looks for what the OS does not have.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/debian-source.sh

EXTRA=$PWD/build/extensions
log() { echo "==> extensions: $*"; }

apt_has() {
    apt-cache policy "$1" 2>/dev/null \
        | awk '/Candidate:/ {found = ($2 != "(none)")} END {exit !found}'
}
installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }
apt_install() {
    installed "$1" && return 0
    log "installing $1"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null 2>&1
}

build_pgvector() {  # build_pgvector <major>
    local major=$1 so=$EXTRA/usr/lib/postgresql/$1/lib/vector.so
    [[ -f $so ]] && { log "pgvector for PostgreSQL $major: built earlier"; return 0; }
    debsrc_update || { log "Debian's archive cannot be read: no pgvector for $major"; return 1; }
    apt_install "postgresql-server-dev-$major"
    debsrc_build_tools
    local version work
    for version in $(debsrc_versions pgvector); do
        work=$PWD/build/.work-pgvector-$version
        debsrc_unpack pgvector "$version" "$work" || continue
        log "building pgvector $version for PostgreSQL $major (once)"
        if (cd "$work/src" \
                && make USE_PGXS=1 PG_CONFIG="/usr/lib/postgresql/$major/bin/pg_config" \
                    OPTFLAGS="" >build.log 2>&1 \
                && make USE_PGXS=1 PG_CONFIG="/usr/lib/postgresql/$major/bin/pg_config" \
                    DESTDIR="$EXTRA" install >install.log 2>&1); then
            rm -rf "$work"
            return 0
        fi
        log "pgvector $version did not build for $major (see $work); trying an older one"
    done
    return 1
}

build_module() {  # build_module <major>: the platform's module, when its source changed
    local major=$1 src=$PWD/unikernel_images/pg_module
    local stamp=$EXTRA/.dbaas-$major.sha256 sum
    sum=$(cat "$src"/*.c "$src/Makefile" | sha256sum | cut -d' ' -f1)
    if [[ -f $stamp && $(cat "$stamp") == "$sum" \
            && -f $EXTRA/usr/lib/postgresql/$major/lib/dbaas.so ]]; then
        return 0
    fi
    apt_install "postgresql-server-dev-$major"
    debsrc_build_tools
    log "building the platform's module for PostgreSQL $major"
    local work=$PWD/build/.work-dbaas-$major
    rm -rf "$work" && cp -r "$src" "$work"
    (cd "$work" && make PG_CONFIG="/usr/lib/postgresql/$major/bin/pg_config" >build.log 2>&1 \
        && make PG_CONFIG="/usr/lib/postgresql/$major/bin/pg_config" DESTDIR="$EXTRA" \
            install >install.log 2>&1) || { log "the module did not build: see $work"; exit 1; }
    rm -rf "$work"
    mkdir -p "$EXTRA" && echo "$sum" > "$stamp"
}

for pg in /usr/lib/postgresql/*/bin/postgres; do
    major=$(basename "$(dirname "$(dirname "$pg")")")
    build_module "$major"
    if apt_has "postgresql-$major-postgis-3"; then
        apt_install "postgresql-$major-postgis-3"
    else
        log "no PostGIS package for PostgreSQL $major: images go without it"
    fi
    if apt_has "postgresql-$major-pgvector"; then
        apt_install "postgresql-$major-pgvector"
    else
        build_pgvector "$major" || log "no pgvector for PostgreSQL $major: images go without it"
    fi
done
