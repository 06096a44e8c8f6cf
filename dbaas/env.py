"""Typed readers for environment variables, and the platform's on-disk layout.

Kept free of Django imports so that helper scripts can use it before settings load.
"""

import os
import pwd
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def data_dir() -> Path:
    """All state lives here: control plane, redis, images, tenants, pooler."""
    return Path(env_str("DBAAS_DATA_DIR", str(BASE_DIR / "var"))).resolve()


def services_dir() -> Path:
    """Home of the control-plane cluster and Redis that `make run` starts itself."""
    return Path(env_str("DBAAS_SERVICES_DIR", str(data_dir()))).resolve()


def service_user() -> str:
    """The unprivileged account that runs postgres, redis and pgbouncer.

    PostgreSQL refuses to run as root, so when the platform runs as root the
    daemons drop to a system user made by scripts/setup.sh.
    """
    if os.geteuid() == 0:
        return env_str("DBAAS_SERVICE_USER", "dbaas")
    return pwd.getpwuid(os.geteuid()).pw_name


def pgbouncer_binary() -> str:
    """The PgBouncer scripts/pgbouncer.sh chose (a build of a newer Debian release's
    source, or the OS package); DBAAS_PGBOUNCER_BIN overrides it."""
    chosen = BASE_DIR / "build" / "pgbouncer" / "pgbouncer"
    default = str(chosen) if chosen.exists() else "pgbouncer"
    return env_str("DBAAS_PGBOUNCER_BIN", default)
