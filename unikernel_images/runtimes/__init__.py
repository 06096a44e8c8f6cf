"""Instance runtimes, one module each, behind the interface in `base`."""

import json
from pathlib import Path

from unikernel_images.runtimes.base import Runtime
from unikernel_images.runtimes.microvm import MicrovmRuntime
from unikernel_images.runtimes.sandbox import SandboxRuntime

RUNTIMES: dict[str, type[Runtime]] = {
    SandboxRuntime.kind: SandboxRuntime,
    MicrovmRuntime.kind: MicrovmRuntime,
}


def get_runtime(kind: str, instances_dir: Path) -> Runtime:
    try:
        return RUNTIMES[kind](instances_dir)
    except KeyError:
        raise ValueError(f"unknown runtime {kind!r}; known: {', '.join(RUNTIMES)}") from None


def runtime_of(instances_dir: Path, instance_id: str) -> Runtime:
    """The runtime an instance was last started with, from its own files (remember):
    for the host's work that has no control plane to ask (stopping them all)."""
    try:
        spec = json.loads((instances_dir / instance_id / "spec.json").read_text())
        kind = spec.get("runtime", SandboxRuntime.kind)
    except (OSError, ValueError):  # never started, or not an instance at all
        kind = SandboxRuntime.kind
    return get_runtime(kind if kind in RUNTIMES else SandboxRuntime.kind, instances_dir)
