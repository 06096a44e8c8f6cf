"""Per-instance resource limits through cgroups, v1 or v2, whichever the host has."""

import functools
import logging
import os

from unikernel_images.cgroups.base import ROOT, Cgroups, Limits
from unikernel_images.cgroups.v1 import V1
from unikernel_images.cgroups.v2 import V2

__all__ = ["Cgroups", "Limits", "detect"]

log = logging.getLogger(__name__)


@functools.cache
def detect() -> Cgroups | None:
    """The host's cgroups, if the platform may use them (as root); None otherwise."""
    if os.geteuid() != 0:
        return None
    controllers = ROOT / "cgroup.controllers"
    if controllers.exists() and {"memory", "cpu", "pids"} <= set(controllers.read_text().split()):
        return V2()
    if all((ROOT / c / "cgroup.procs").exists() for c in V1.CONTROLLERS):
        return V1()
    log.warning("no usable cgroups (v1 memory, cpu, pids or v2): instances run without limits")
    return None
