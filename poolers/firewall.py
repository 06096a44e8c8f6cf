"""The host firewall rule in front of the pooler: at most N connections open at once
from one client address (nftables, rendered from templates/nftables.conf.j2).

PgBouncer drops a connection that has not logged in after client_login_timeout, but
has no limit per address: without this, one address could hold all of its
max_client_conn slots with connections that never send a byte.
"""

import subprocess
from pathlib import Path

from dbaas.files import render_template

PACKAGE_DIR = Path(__file__).resolve().parent


class FirewallError(Exception):
    pass


def table_name(port: int) -> str:
    return f"dbaas_pooler_{port}"


def limit_connections_per_address(port: int, limit: int) -> None:
    """Install (or replace) the rule for the pooler's port; limit 0 removes it."""
    if limit <= 0:
        remove(port)
        return
    ruleset = render_template(
        PACKAGE_DIR, "nftables.conf.j2", table=table_name(port), port=port, limit=limit
    )
    _nft(["-f", "-"], ruleset)


def remove(port: int) -> None:
    _nft(["-f", "-"], f"table inet {table_name(port)}\ndelete table inet {table_name(port)}\n")


def _nft(args: list[str], stdin: str) -> None:
    try:
        proc = subprocess.run(
            ["nft", *args], input=stdin, capture_output=True, text=True, timeout=30
        )
    except OSError as exc:
        raise FirewallError(f"nft cannot run: {exc}") from exc
    if proc.returncode != 0:
        raise FirewallError(f"nft failed: {proc.stderr.strip()[-500:]}")
