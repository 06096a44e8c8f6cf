"""One address cannot fill the pooler with connections that never log in: the host
firewall caps the connections an address holds open to it (make test sets
DBAAS_POOLER_CONNECTIONS_PER_ADDRESS=200; 1000 by default), and PgBouncer drops
those that have not logged in after client_login_timeout."""

import socket
import time

import pytest
from django.conf import settings

from tests.conftest import connect
from tests.test_api_databases import create

pytestmark = pytest.mark.timeout(120)


def test_half_open_connections_from_one_address_do_not_lock_others_out(live, alice):
    db = create(alice, "busy")
    limit = settings.DBAAS_POOLER_CONNECTIONS_PER_ADDRESS
    held, refused = [], 0
    try:
        for _ in range(2000):  # from another loopback address, as an attacker would
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.settimeout(2)
            try:
                sock.connect((settings.DBAAS_PUBLIC_HOST, settings.DBAAS_PGBOUNCER_PORT))
                held.append(sock)
            except OSError:
                sock.close()
                refused += 1
        assert len(held) == limit and refused == 2000 - limit
        # Everyone else gets in at once.
        started = time.monotonic()
        with connect(db["connection_string"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert time.monotonic() - started < 5
        # Those that never logged in are dropped after client_login_timeout (10 s).
        time.sleep(11)
        assert all(_closed_by_the_pooler(sock) for sock in held[:20])
    finally:
        for sock in held:
            sock.close()


def _closed_by_the_pooler(sock: socket.socket) -> bool:
    """True once the pooler has closed it (after its error message, if any)."""
    sock.settimeout(5)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True
