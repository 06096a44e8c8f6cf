# Sourced by scripts/pgbouncer.sh and scripts/extensions.sh: Debian *source* packages
# of later releases (trixie, testing, sid), read through a private apt state under
# build/apt so that the system's own sources and packages stay as they are. Nothing
# here installs another release's binaries: what is wanted is built from source.

DEBSRC_ROOT=${DEBSRC_ROOT:-$PWD/build/apt}
# Signatures are checked; Valid-Until is not: a mirror that serves testing or sid a
# few weeks late still has good sources (seen on a Debian 13 machine).
DEBSRC_OPTS=(-o "Dir::Etc::SourceList=$DEBSRC_ROOT/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$DEBSRC_ROOT/lists" -o "Dir::Cache=$DEBSRC_ROOT/cache"
             -o APT::Sandbox::User=root -o Acquire::Check-Valid-Until=false)

# debsrc_update: fetch the source indexes (at most once per DBAAS_DEBSRC_MAX_AGE
# seconds, a day by default); fails when Debian's archive cannot be reached.
debsrc_update() {
    local stamp=$DEBSRC_ROOT/.updated max_age=${DBAAS_DEBSRC_MAX_AGE:-86400}
    if [[ -f $stamp ]] && (( $(date +%s) - $(stat -c %Y "$stamp") < max_age )); then
        return 0
    fi
    mkdir -p "$DEBSRC_ROOT/lists/partial" "$DEBSRC_ROOT/cache/archives/partial"
    local key=/usr/share/keyrings/debian-archive-keyring.gpg
    cat > "$DEBSRC_ROOT/sources.list" <<EOF
deb-src [signed-by=$key] http://deb.debian.org/debian trixie main
deb-src [signed-by=$key] http://deb.debian.org/debian-security trixie-security main
deb-src [signed-by=$key] http://deb.debian.org/debian testing main
deb-src [signed-by=$key] http://deb.debian.org/debian sid main
EOF
    # One suite that cannot be read does not spoil the others.
    apt-get "${DEBSRC_OPTS[@]}" update -qq >/dev/null 2>&1 || true
    compgen -G "$DEBSRC_ROOT/lists/*_Sources*" >/dev/null || return 1  # maybe .lz4
    touch "$stamp"
}

# debsrc_versions <package>: the versions the indexes list, newest first.
debsrc_versions() {
    apt-cache "${DEBSRC_OPTS[@]}" showsrc "$1" 2>/dev/null \
        | awk '/^Version:/ {print $2}' | sort -u | sort -rV
}

# debsrc_unpack <package> <version> <dir>: download and unpack (Debian's patches
# applied) into <dir>/src; fails if the archive does not have the files.
debsrc_unpack() {
    local package=$1 version=$2 dir=$3
    rm -rf "$dir" && mkdir -p "$dir"
    (cd "$dir" && apt-get "${DEBSRC_OPTS[@]}" source --download-only "$package=$version" \
        >/dev/null 2>&1 && dpkg-source -x ./*.dsc src >/dev/null 2>&1)
}

# debsrc_upstream <debian version>: 1:1.24.1-1+deb13u2 -> 1.24.1
debsrc_upstream() { local v=${1#*:}; echo "${v%%-*}"; }

# debsrc_at_least <version> <minimum>: dpkg's comparison; 1.26.1~rc1 counts as 1.26.1.
debsrc_at_least() { dpkg --compare-versions "$1" ge "$2~"; }

# debsrc_build_tools <package>...: the build dependencies, installed only when wanted.
debsrc_build_tools() {
    local missing=() pkg
    for pkg in build-essential dpkg-dev pkg-config "$@"; do
        [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] \
            || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        echo "==> installing build tools: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}
