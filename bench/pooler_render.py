#!/usr/bin/env python3
"""What rendering one PgBouncer shard's files costs the host, at many tenants.

A host store of its own (a scratch data directory) filled with N tenants' specs,
no servers, no PgBouncer running; the host's own render (tenants/host/agent.py,
poolers/pgbouncer.py) of shard 0, median of --rounds each:

- after a create: one new tenant in the shard, rendered by the process that put
  it (what a provision does, before its RELOAD);
- in another process: the shard's files written by someone else since this
  process last rendered them (what the reconcile's beat finds in the other
  worker process after a create); the contents come out the same, nothing is
  written;
- unchanged: nothing new (every shard at every reconcile beat).

    .venv/bin/python bench/pooler_render.py [--tenants 1000,10000] [--rounds 20]
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def median_ms(work: Callable[[], object], before: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        before()
        began = time.perf_counter()
        work()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def measure(tenants: int, rounds: int) -> dict:
    from django.conf import settings

    from poolers.scram import scram_secret
    from tenants.host import agent
    from tenants.host.spec import PlanSpec, TenantSpec

    plan = PlanSpec("free", 5, 5, 100, True, 300, 64, 0.25, 32, 100, 8, 3)
    secret = scram_secret("bench")  # one secret: hashing thousands is not the point

    def spec(pk: int) -> TenantSpec:
        return TenantSpec(pk, f"db{pk}", f"s{pk:07d}", secret, "sandbox", "postgres-15", plan, "")

    store = agent.store()
    for pk in range(1, tenants + 1):
        store.put(spec(pk), "sleeping")
    shards = settings.DBAAS_POOLER_SHARDS
    bouncer = agent.pooler(0)
    bouncer.shard_dir.mkdir(parents=True, exist_ok=True)
    bouncer._admin_secret_file.write_text(secret)
    forwards = store.forwards()
    agent._render(bouncer, forwards)
    next_pk = [tenants - tenants % shards + shards]

    def one_more() -> None:
        next_pk[0] += shards  # one more in shard 0
        store.put(spec(next_pk[0]), "sleeping")

    def written_elsewhere() -> None:
        agent._rendered.clear()  # this process no longer knows what it wrote

    def render() -> bool:
        return agent._render(bouncer, forwards)

    return {
        "tenants": tenants,
        "in_shard": len(store.all(agent.ROUTED_STATES, shard=(0, shards))),
        "after_create_ms": median_ms(render, one_more, rounds),
        "other_process_ms": median_ms(render, written_elsewhere, rounds),
        "unchanged_ms": median_ms(render, lambda: None, rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    rows = []
    for tenants in [int(n) for n in args.tenants.split(",")]:
        # A process per count: the host's caches are per process, as in the worker.
        data = Path(tempfile.mkdtemp(prefix="bench-pooler-render-"))
        try:
            read, write = os.pipe()
            if os.fork() == 0:
                os.close(read)
                os.environ |= {"DBAAS_DATA_DIR": str(data), "DBAAS_HOST_NAME": "render"}
                os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dbaas.settings")
                sys.path.insert(0, str(BASE_DIR))
                import django

                django.setup()
                os.write(write, json.dumps(measure(tenants, args.rounds)).encode())
                os._exit(0)
            os.close(write)
            with os.fdopen(read) as pipe:
                rows.append(json.loads(pipe.read()))
            os.wait()
        finally:
            shutil.rmtree(data, ignore_errors=True)
    print(
        f"{'tenants':>8} {'in shard':>8} {'after a create ms':>18} "
        f"{'in another process ms':>22} {'unchanged ms':>13}"
    )
    for r in rows:
        print(
            f"{r['tenants']:>8} {r['in_shard']:>8} {r['after_create_ms']:>18.2f} "
            f"{r['other_process_ms']:>22.2f} {r['unchanged_ms']:>13.2f}"
        )


if __name__ == "__main__":
    main()
