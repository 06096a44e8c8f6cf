"""Waiting on child processes in the foreground, as `make run` does: Ctrl-C from a
terminal reaches them too (same process group); SIGINT or SIGTERM sent to us alone
is passed on as SIGTERM. When one child exits (a crash, or Ctrl-C), the others are
stopped too: the platform runs whole or not at all, as under honcho."""

import signal
import subprocess
import time


def wait_all(children: list[subprocess.Popen]) -> None:
    def stop_all(signum=None, frame=None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stopping = False
        while any(child.poll() is None for child in children):
            if not stopping and any(child.poll() is not None for child in children):
                stopping = True
                stop_all()
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
