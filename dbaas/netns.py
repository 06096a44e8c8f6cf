"""Several hosts on one machine, for trying and testing the fleet: each host gets a
network namespace of its own with one address on a bridge the platform makes
(`10.87.<slot>.0/24`), so that its PgBouncer listens where a real host's would and
clients reach each host at its own address. The control plane stays in the
machine's own namespace; hosts reach its PostgreSQL and Redis over their unix
sockets, which a network namespace does not hide.

Processes enter a host's namespace with `nsenter --net` (not `ip netns exec`,
which remounts /sys and would hide the cgroup hierarchies the sandbox uses).
Everything here is made by root and removed by `fleet_down`.
"""

import subprocess
from dataclasses import dataclass
from pathlib import Path

from dbaas.env import services_dir

NETNS_DIR = Path("/run/netns")


@dataclass(frozen=True)
class LocalHost:
    name: str
    namespace: str
    address: str

    def enter(self) -> list[str]:
        """The command prefix that runs a program in this host's network namespace."""
        return ["nsenter", f"--net={NETNS_DIR / self.namespace}", "--"]

    def environment(self, data: Path) -> dict[str, str]:
        """What `manage.py run_host` needs to be this host: its name, data root and
        address, and the control plane's services (Redis), which it shares. Not the
        platform's CA: like a host on another machine, it asks the control plane for
        its certificate, and its token is in its data root (host_identity.install_local)."""
        return {
            "DBAAS_HOST_NAME": self.name,
            "DBAAS_DATA_DIR": str(data),
            "DBAAS_SERVICES_DIR": str(services_dir()),
            "DBAAS_PUBLIC_HOST": self.address,
            "DBAAS_PGBOUNCER_LISTEN": self.address,
        }


def bridge_name(slot: int) -> str:
    return f"dbaasbr{slot}"


def gateway(slot: int) -> str:
    """The machine's own address on the bridge."""
    return f"10.87.{slot}.1"


def fleet_up(names: list[str], slot: int = 0) -> list[LocalHost]:
    """A namespace per host name, each with one address (10.87.<slot>.2, .3, ...) on
    the slot's bridge. Whatever an earlier run left is removed first."""
    if not 0 <= slot <= 255 or len(names) > 200:
        raise ValueError("slot 0-255, at most 200 hosts")
    fleet_down(slot)
    bridge = bridge_name(slot)
    _ip("link", "add", bridge, "type", "bridge")
    _ip("addr", "add", f"{gateway(slot)}/24", "dev", bridge)
    _ip("link", "set", bridge, "up")
    hosts = []
    for number, name in enumerate(names, start=2):
        host = LocalHost(name, f"dbaas{slot}-{name}", f"10.87.{slot}.{number}")
        outside, inside = f"dbv{slot}-{number}", f"dbi{slot}-{number}"
        _ip("netns", "add", host.namespace)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", host.namespace)
        _ip("-n", host.namespace, "link", "set", inside, "name", "eth0")
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.namespace, "link", "set", "eth0", "up")
        _ip("-n", host.namespace, "link", "set", "lo", "up")
        _ip("link", "set", outside, "master", bridge)
        _ip("link", "set", outside, "up")
        hosts.append(host)
    return hosts


def fleet_down(slot: int = 0) -> None:
    """Remove the slot's namespaces (their veth pairs go with them) and its bridge."""
    prefix = f"dbaas{slot}-"
    if NETNS_DIR.exists():
        for entry in sorted(NETNS_DIR.iterdir()):
            if entry.name.startswith(prefix):
                _ip("netns", "delete", entry.name, check=False)
    _ip("link", "delete", bridge_name(slot), check=False)


def _ip(*args: str, check: bool = True) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
