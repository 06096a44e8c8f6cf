"""Run one platform process and restart it when it dies: `python -m dbaas.supervise CMD...`.

honcho (under `make run`) stops every process as soon as one exits; crash-only
components (the host agent, beat, the pooler, the activator) should instead come
back by themselves, as they would under systemd. SIGINT/SIGTERM are passed to
the child and end the supervisor.
"""

import signal
import subprocess
import sys
import time

BACKOFF_MAX = 10.0


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m dbaas.supervise COMMAND [ARGS...]", file=sys.stderr)
        return 2
    stopping = False
    child: subprocess.Popen | None = None

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    backoff = 0.5
    while True:
        started = time.monotonic()
        child = subprocess.Popen(argv)
        code = child.wait()
        if stopping:
            return code
        # A process that ran for a while gets restarted at once; one that keeps
        # dying right away waits longer each time.
        backoff = 0.5 if time.monotonic() - started > 30 else min(backoff * 2, BACKOFF_MAX)
        print(
            f"supervise: {argv[0]} exited with {code}; restarting in {backoff:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(backoff)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
