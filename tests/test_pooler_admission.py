"""One address cannot fill the pooler with connections that never log in: the host
firewall caps the connections an address holds open to it (make test sets
DBAAS_POOLER_CONNECTIONS_PER_ADDRESS=200; 1000 by default), and PgBouncer drops
those that have not logged in after client_login_timeout. Nor guess passwords at
full speed: after DBAAS_POOLER_LOGIN_FAILURES_PER_ADDRESS failed logins (make test:
10, from any address but the test session's own 127.0.0.1, whose tests fail logins
on purpose) the address is refused for a while."""

import socket
import time

import pytest
from django.conf import settings

from tests.conftest import connect, wait_until
from tests.helpers import create

pytestmark = pytest.mark.timeout(120)


def test_half_open_connections_from_one_address_do_not_lock_others_out(live, alice):
    db = create(alice, "busy")
    limit = settings.DBAAS_POOLER_CONNECTIONS_PER_ADDRESS
    held, refused = [], 0
    try:
        for n in range(2000):  # from another loopback address, as an attacker would
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.settimeout(2)
            # Over all of the host's PgBouncers: the cap is one for all of them.
            port = settings.DBAAS_PGBOUNCER_PORT + n % settings.DBAAS_POOLER_SHARDS
            try:
                sock.connect((settings.DBAAS_PUBLIC_HOST, port))
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
        # Those that never logged in are dropped after client_login_timeout
        # (DBAAS_POOLER_LOGIN_TIMEOUT: 10 s in the tests, 60 by default).
        time.sleep(settings.DBAAS_POOLER_LOGIN_TIMEOUT + 1)
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


def test_an_address_that_keeps_failing_logins_is_banned_alone(live, alice):
    from poolers import firewall
    from tests import pgwire

    db = create(alice, "guarded")
    host, port = settings.DBAAS_PUBLIC_HOST, settings.DBAAS_PGBOUNCER_PORT  # the ban's table
    # Guesses spread over the host's PgBouncers count together: the database's own
    # (a wrong password) and another (where its user is not known at all).
    shards = settings.DBAAS_POOLER_SHARDS
    ports = [db["port"], port + (db["port"] - port + 1) % shards]
    attacker = "127.0.0.3"  # not the admission test's address: a ban outlives the test
    try:
        for n in range(settings.DBAAS_POOLER_LOGIN_FAILURES_PER_ADDRESS):
            conn = pgwire.Connection(host, ports[n % 2], source=attacker)
            with pytest.raises(pgwire.ServerError, match="authentication"):
                conn.login(db["user"], db["database"], f"guess-{n}")
            conn.close()
        # The guard reads PgBouncer's log twice a second: the ban follows at once.
        wait_until(lambda: attacker in firewall.banned(port), timeout=5)
        for banned_from in {port, *ports}:
            with pytest.raises(OSError):  # refused before PgBouncer sees it
                pgwire.Connection(host, banned_from, source=attacker, timeout=2)
        # Another address, and the owner with the right password, are not touched.
        with connect(db["connection_string"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        other = pgwire.Connection(host, db["port"], source="127.0.0.4")
        other.login(db["user"], db["database"], db["password"])
        other.close()
    finally:
        if attacker in firewall.banned(port):
            firewall.unban(port, attacker)
