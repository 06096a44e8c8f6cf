"""Typed readers for environment variables, and the platform's on-disk layout.

Kept free of Django imports so that helper scripts can use it before settings load.
"""

import functools
import os
import pwd
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of `choices`; anything else stops the program with the variable's name."""
    value = os.environ.get(name) or default
    if value not in choices:
        raise SystemExit(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_int(name: str, default: int, minimum: int | None = 0) -> int:
    """An integer (`minimum` and up; None: any). A bad value stops the program
    with the variable's name: a typo must not start a platform with a default."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SystemExit(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(name: str, default: float, minimum: float | None = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise SystemExit(f"{name} must be a finite number, got {raw!r}")
    if minimum is not None and value < minimum:
        raise SystemExit(f"{name} must be at least {minimum}, got {value}")
    return value


def env_secret(name: str, default: str = "") -> str:
    """A secret, from NAME, or from the file NAME_FILE names (as container and
    systemd credentials hand them over; its trailing newline dropped). Both set
    is a mistake."""
    path = os.environ.get(f"{name}_FILE", "")
    if not path:
        return env_str(name, default)
    if os.environ.get(name):
        raise SystemExit(f"set {name} or {name}_FILE, not both")
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise SystemExit(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None


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
    return _resolved(env_str("DBAAS_DATA_DIR", str(BASE_DIR / "var")))


@functools.lru_cache(maxsize=16)
def _resolved(path: str) -> Path:
    """A path made absolute, links followed: once per path (data_dir() is called
    for every tenant of every reconcile)."""
    return Path(path).resolve()


def pki_dir() -> Path:
    """On the control plane: the platform's CA, which signs every host's pooler
    certificate (the host on the control plane's own machine signs its own with it).
    On any other host: the CA's certificate and the host's own certificate and key
    (tenants/host/identity.py), never the CA's key."""
    return Path(env_str("DBAAS_PKI_DIR", str(data_dir() / "pki"))).resolve()


def services_dir() -> Path:
    """Home of the control-plane cluster and Redis that `make run` starts itself."""
    return Path(env_str("DBAAS_SERVICES_DIR", str(data_dir()))).resolve()


def _account(variable: str, default: str) -> str:
    """The system account a service of the platform runs as (made by setup.sh).

    PostgreSQL refuses to run as root, and each service gets its own account, so
    that whoever takes one over (PgBouncer faces the internet) does not get the
    others: PgBouncer cannot read the control plane's files or Redis's, nor log in
    to a tenant's server as its superuser. As an ordinary user, everything runs as
    that user.
    """
    if os.geteuid() == 0:
        return env_str(variable, default)
    return pwd.getpwuid(os.geteuid()).pw_name


def pooler_user() -> str:
    """Runs PgBouncer; the group that may reach tenants' sockets and the activator's."""
    return _account("DBAAS_POOLER_USER", "dbaas-pooler")


def controlplane_user() -> str:
    """Runs the control-plane PostgreSQL `make run` starts (and builds images' templates)."""
    return _account("DBAAS_CONTROLPLANE_USER", "dbaas-db")


def redis_user() -> str:
    """Runs the Redis `make run` starts."""
    return _account("DBAAS_REDIS_USER", "dbaas-redis")


def pgbouncer_binary() -> str:
    """The PgBouncer scripts/pgbouncer.sh chose (a build of a newer Debian release's
    source, or the OS package); DBAAS_PGBOUNCER_BIN overrides it."""
    chosen = BASE_DIR / "build" / "pgbouncer" / "pgbouncer"
    default = str(chosen) if chosen.exists() else "pgbouncer"
    return env_str("DBAAS_PGBOUNCER_BIN", default)
