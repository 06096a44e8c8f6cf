"""The host's periodic work (reconcile, idle check, usage walk) at a lower CPU
priority than what serves clients: on a host of thousands of tenants it takes a
noticeable share of a core every tick, and a tenant's query (its postgres, the
PgBouncer in front) must not wait behind it for a CPU. Tenants it starts run at the
normal priority (the sandbox's launch resets it)."""

import os
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings


@contextmanager
def background() -> Iterator[None]:
    """This process niced to DBAAS_BACKGROUND_NICENESS for the block, and back
    after it (a celery worker process runs one task at a time). Only as root, who
    may return to the higher priority afterwards."""
    wanted = settings.DBAAS_BACKGROUND_NICENESS
    before = os.getpriority(os.PRIO_PROCESS, 0)
    if os.geteuid() != 0 or wanted <= before:
        yield
        return
    os.setpriority(os.PRIO_PROCESS, 0, wanted)
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, before)
