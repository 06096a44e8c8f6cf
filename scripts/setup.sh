#!/usr/bin/env bash
# Makes this machine able to run the platform: Debian packages, the service
# account, and the virtualenv. Idempotent and quick when everything is there.
# `setup.sh test` also installs what only the tests need (a browser).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
# `postgresql` is the OS's current major: 15 on Debian 12, 17 on Debian 13.
PACKAGES=(postgresql postgresql-contrib pgbouncer redis-server bubblewrap acl openssl
          util-linux python3-venv nftables)
# The microvm runtime: QEMU, the guest's init (busybox) and the forwarders (socat).
PACKAGES+=(qemu-system-x86 busybox-static socat)
# Debian 13 moved the old zone names (US/Eastern, ...) apps still use to
# tzdata-legacy; tenants' servers carry every zone the OS has.
# (Output captured first: `grep -q` in a pipe under pipefail can kill the writer.)
tzdata_legacy=$(apt-cache policy tzdata-legacy 2>/dev/null || true)
if [[ $tzdata_legacy =~ Candidate:\ [0-9] ]]; then
    PACKAGES+=(tzdata-legacy)
fi
if [[ "${1:-}" == "test" ]]; then
    PACKAGES+=(chromium)  # the browser tests drive Debian's chromium
    # The README's node-postgres snippet is run by the tests.
    command -v npm >/dev/null || PACKAGES+=(nodejs npm)
fi

# Installed, or provided by an installed package (Debian 13's postgresql-17
# provides postgresql-contrib).
provided=$(dpkg-query -W -f='${db:Status-Abbrev}|${Provides}\n' 2>/dev/null \
    | awk -F'|' '$1 ~ /^ii/ {print $2}' | tr ',' '\n' | sed 's/ *(.*//; s/^ *//')
missing=()
for pkg in "${PACKAGES[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] \
        || grep -qxF "$pkg" <<<"$provided" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $EUID -ne 0 ]]; then
        echo "Missing Debian packages. Run as root:" >&2
        echo "  apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "==> installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Which PgBouncer runs: the newest safe one the OS or Debian's archive offers; and
# the extensions (PostGIS, pgvector) that go into the instance images.
if [[ $EUID -eq 0 ]]; then
    ./scripts/pgbouncer.sh
    ./scripts/extensions.sh
    # The microvm guests' kernel, unpacked from Debian's package (not installed).
    # Without it only the microvm runtime is missing (build_image says so).
    ./scripts/guest-kernel.sh || echo "==> no guest kernel: the microvm runtime is unavailable" >&2
fi

# Debian's packages start their own pgbouncer and redis on the default ports;
# the platform runs its own, so the packaged ones are not needed.
# Each service of the platform runs as an account of its own (dbaas/env.py).
if [[ $EUID -eq 0 ]]; then
    for account in dbaas-pooler dbaas-db dbaas-redis; do
        if ! id "$account" >/dev/null 2>&1; then
            echo "==> creating system user $account"
            useradd --system --home-dir /nonexistent --no-create-home \
                --shell /usr/sbin/nologin "$account"
        fi
    done
fi

stamp="$VENV/.installed"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "==> creating virtualenv $VENV"
    python3 -m venv "$VENV"
fi
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
    echo "==> installing Python packages"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
fi

# node-postgres for the tests of the README's snippet (a version known to work).
if [[ "${1:-}" == "test" && ! -d build/node/node_modules/pg ]]; then
    echo "==> installing node-postgres for the tests"
    npm install --silent --no-audit --no-fund --prefix build/node pg@8.16.3 >/dev/null
fi
