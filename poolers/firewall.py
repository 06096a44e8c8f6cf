"""The host firewall rules in front of the pooler (nftables, rendered from
templates/nftables.conf.j2): at most N connections open at once from one client
address, and addresses banned for a while after too many failed logins.

PgBouncer drops a connection that has not logged in after client_login_timeout, but
has no limit per address: without this, one address could hold all of its
max_client_conn slots with connections that never send a byte. Nor does it slow
down password guessing; poolers/login_guard.py bans through here.
"""

import ipaddress
import subprocess
from pathlib import Path

from dbaas.files import render_template

PACKAGE_DIR = Path(__file__).resolve().parent


class FirewallError(Exception):
    pass


def table_name(port: int) -> str:
    return f"dbaas_pooler_{port}"


def install(port: int, connections_per_address: int, ports: int = 1) -> None:
    """Install (or replace) the table of the poolers on `port` and the `ports - 1`
    after it (a host's shards): its ban sets, and the cap on connections per address
    over all of them, unless that is 0. Tables and bans are named by `port`."""
    ruleset = render_template(
        PACKAGE_DIR,
        "nftables.conf.j2",
        table=table_name(port),
        port=port if ports == 1 else f"{port}-{port + ports - 1}",
        limit=max(0, connections_per_address),
    )
    _nft(["-f", "-"], ruleset)


def ban(port: int, address: str, seconds: int) -> None:
    """Refuse new connections from `address` to the pooler for `seconds`."""
    ip, ban_set = _ban_set(port, address)
    _nft(["-f", "-"], f"add element {ban_set} {{ {ip} timeout {int(seconds)}s }}\n")


def unban(port: int, address: str) -> None:
    ip, ban_set = _ban_set(port, address)
    _nft(["-f", "-"], f"delete element {ban_set} {{ {ip} }}\n")


def _ban_set(port: int, address: str) -> tuple[str, str]:
    """The address, checked, and the ban set of its family."""
    ip = ipaddress.ip_address(address)
    family = "v4" if ip.version == 4 else "v6"
    return str(ip), f"inet {table_name(port)} banned_{family}"


def banned(port: int) -> set[str]:
    """The addresses banned now."""
    found: set[str] = set()
    for family in ("v4", "v6"):
        out = _nft(["list", "set", "inet", table_name(port), f"banned_{family}"], "")
        body = out.partition("elements = {")[2].partition("}")[0]
        for item in body.split(","):
            if item.strip():
                found.add(item.split()[0])
    return found


def _nft(args: list[str], stdin: str) -> str:
    try:
        proc = subprocess.run(
            ["nft", *args], input=stdin, capture_output=True, text=True, timeout=30
        )
    except OSError as exc:
        raise FirewallError(f"nft cannot run: {exc}") from exc
    if proc.returncode != 0:
        raise FirewallError(f"nft failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout
