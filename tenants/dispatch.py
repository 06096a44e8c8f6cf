"""Handing work to a host's queue once the request's transaction has committed, and
what happens when the queue (Redis) cannot take it.

Work is queued only after the rows that describe it are committed (a worker must
find them). If the broker then refuses the message, the request is undone where
it can be (`undo`: the row it made goes, so nothing half-made is left and nothing
counts against a quota) and answered 503; work the reconcile loop finishes by
itself anyway (a deletion) is left to it (`swept=True`).
"""

import logging
from collections.abc import Callable

import kombu.exceptions
import redis.exceptions
from django.db import transaction

from tenants.errors import Unavailable

log = logging.getLogger(__name__)

# What publishing raises when Redis is down or unreachable.
BROKER_ERRORS = (kombu.exceptions.OperationalError, redis.exceptions.RedisError, OSError)


class QueueUnavailable(Unavailable):
    pass


def send_after_commit(
    task,
    args: tuple,
    *,
    queue: str,
    undo: Callable[[], object] | None = None,
    swept: bool = False,
) -> None:
    """Queue `task(*args)` on `queue` when the current transaction commits (at once
    outside one). If it cannot be queued: `undo()`, then QueueUnavailable (503),
    unless the work is `swept` (finished by the reconcile loop when the queue is
    back), which is only logged."""

    def send() -> None:
        try:
            task.apply_async(args, queue=queue)
        except BROKER_ERRORS as exc:
            log.warning("cannot queue %s%r on %s: %s", task.name, args, queue, exc)
            if swept:
                return
            if undo is not None:
                undo()
            raise QueueUnavailable(
                "the platform's task queue cannot be reached right now, so nothing was "
                "done; try again in a minute"
            ) from exc

    transaction.on_commit(send)
