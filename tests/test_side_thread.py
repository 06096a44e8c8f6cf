"""A provision has the pooler learn of the new tenant on a side thread while its
server starts (tenants/host/agent.py, _meanwhile): the side work runs during the
block, its error is not lost, and a failed block is cleaned up only once the side
work is over (the cleanup renders the pooler again, without the tenant)."""

import threading
import time

import pytest

from tenants.host import agent


def test_the_side_work_runs_during_the_block_and_its_error_is_raised_after_it():
    started, release = threading.Event(), threading.Event()

    def work() -> None:
        started.set()
        assert release.wait(5)
        raise ValueError("the pooler could not be rendered")

    with pytest.raises(ValueError, match="could not be rendered"), agent._meanwhile(work):
        assert started.wait(5), "the side work did not start while the block ran"
        release.set()


def test_a_failed_block_is_raised_once_the_side_work_is_over():
    finished = threading.Event()

    def slow_work() -> None:
        time.sleep(0.3)
        finished.set()
        raise ValueError("second")

    # The block's error is the one raised, after the side work's end.
    with pytest.raises(RuntimeError, match="did not start"), agent._meanwhile(slow_work):
        raise RuntimeError("the server did not start")
    assert finished.is_set()


def test_the_side_thread_is_kept_between_provisions():
    threads = []
    for _ in range(2):
        with agent._meanwhile(lambda: threads.append(threading.current_thread())):
            pass
    assert len(threads) == 2 and threads[0] is threads[1] is not threading.current_thread()
