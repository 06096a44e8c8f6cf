"""Published PgBouncer flaws the platform knows of: which PgBouncer versions have
them, and whether the configuration this host renders keeps them closed.

Read by `run_pooler` and `manage.py up`, which warn when a host is exposed.
"""

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

Version = tuple[int, int, int]


@dataclass(frozen=True)
class Advisory:
    cve: str
    summary: str
    affected_from: Version
    fixed_in: Version


CROSS_TENANT_LOGIN = Advisory(
    cve="CVE-2026-107350",
    summary=(
        "a client that knows one user's password can log in as another SCRAM user "
        "(a second StartupMessage during SCRAM, after a database PgBouncer does not know)"
    ),
    affected_from=(1, 17, 0),
    fixed_in=(1, 26, 1),
)


class UnknownVersion(Exception):
    pass


def installed_version(binary: str = "pgbouncer") -> Version:
    """The version `binary --version` reports, e.g. (1, 18, 0)."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError as exc:
        raise UnknownVersion(f"cannot run {binary}: {exc}") from exc
    return parse_version(out.stdout + out.stderr)


def parse_version(text: str) -> Version:
    match = re.search(r"PgBouncer\s+(\d+)\.(\d+)(?:\.(\d+))?", text, re.IGNORECASE)
    if not match:
        raise UnknownVersion(f"no PgBouncer version in {text.strip()[:200]!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def is_affected(version: Version, advisory: Advisory = CROSS_TENANT_LOGIN) -> bool:
    return advisory.affected_from <= version < advisory.fixed_in


def logins_confined(ini: Path, hba: Path) -> bool:
    """Is the mitigation of CVE-2026-107350 in place in these rendered files?

    It is when PgBouncer decides by its hba file (auth_type = hba) and every rule of
    that file that accepts a login names its databases one by one: no `all`,
    `sameuser` or `@file`, so a database PgBouncer does not know matches no rule and
    no SCRAM exchange can begin for it.
    """
    try:
        settings = _ini_settings(ini.read_text())
        rules = hba.read_text().splitlines()
    except FileNotFoundError:
        return False
    if settings.get("auth_type") != "hba" or settings.get("auth_hba_file") != str(hba):
        return False
    for line in rules:
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) < 4:
            return False
        method = fields[-1]
        if method == "reject":
            continue
        databases = fields[1].split(",")
        if any(
            name.strip('"') in ("all", "sameuser") or name.startswith("@") for name in databases
        ):
            return False
    return True


def _ini_settings(text: str) -> dict[str, str]:
    settings = {}
    section = None
    for raw in text.splitlines():
        line = raw.split(";", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif "=" in line and section == "pgbouncer":
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings


@dataclass(frozen=True)
class Exposure:
    version: Version
    affected: bool
    mitigated: bool

    @property
    def exposed(self) -> bool:
        return self.affected and not self.mitigated

    def message(self, advisory: Advisory = CROSS_TENANT_LOGIN) -> str:
        version = ".".join(map(str, self.version))
        fixed = ".".join(map(str, advisory.fixed_in))
        if not self.affected:
            return f"PgBouncer {version} is not affected by {advisory.cve}"
        if self.mitigated:
            return (
                f"PgBouncer {version} is affected by {advisory.cve} (fixed in {fixed}); "
                "mitigated here: the hba file names every database (docs/security.md)"
            )
        return (
            f"WARNING: PgBouncer {version} is affected by {advisory.cve}: {advisory.summary}. "
            f"The mitigation is NOT in place (auth_type = hba with databases named one by "
            f"one); upgrade to {fixed} or newer, see docs/security.md"
        )


def exposure(version: Version, ini: Path, hba: Path) -> Exposure:
    return Exposure(version, is_affected(version), logins_confined(ini, hba))
