"""Instance runtimes, one module each, behind the interface in `base`."""

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
