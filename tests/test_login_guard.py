"""The pooler's login guard on its own: which log lines are failed logins, how they
are counted, and how the log is followed when it is cut (the ban itself, against
the real pooler and firewall, is in test_pooler_admission.py)."""

from poolers.login_guard import MAX_LOG_BYTES, FailureCounter, LogFollower, failed_login

PREFIX = "2026-11-28 23:22:16.123 UTC [24314]"


def test_failed_logins_are_recognised_in_pgbouncers_words():
    wrong = f"{PREFIX} ERROR C-0x55d1aa: app_x/app_x@10.0.0.7:51234 password authentication failed"
    sasl = f"{PREFIX} WARNING C-0x55d1aa: app_x/app_x@10.0.0.7:51234 pooler error: SASL authentication failed"  # noqa: E501
    hba = f"{PREFIX} WARNING C-0x1: (nodb)/bob@[2001:db8::1]:4000 pooler error: no authentication method is found"  # noqa: E501
    assert failed_login(wrong) == failed_login(sasl) == ("10.0.0.7", 51234)
    assert failed_login(hba) == ("2001:db8::1", 4000)
    # Not failed logins: a login timeout (the connection cap handles those), a
    # server-side warning, anything else.
    timeout = (
        f"{PREFIX} WARNING C-0x1: (nodb)/(nouser)@10.0.0.7:4 pooler error: client_login_timeout"  # noqa: E501
    )
    server = f"{PREFIX} WARNING S-0x1: app_x/app_x@unix:5432 got packet 'E' from server"
    assert failed_login(timeout) is None and failed_login(server) is None


def test_failures_are_counted_per_address_once_per_connection_in_a_window():
    now = [0.0]
    counter = FailureCounter(limit=3, window=60, clock=lambda: now[0])
    assert not counter.failed("10.0.0.7", 1)
    assert not counter.failed("10.0.0.7", 1)  # the same connection's second line
    assert not counter.failed("10.0.0.8", 1)  # another address
    assert not counter.failed("10.0.0.7", 2)
    now[0] = 61  # the first two slid out of the window
    assert not counter.failed("10.0.0.7", 3)
    assert not counter.failed("10.0.0.7", 4)
    assert counter.failed("10.0.0.7", 5)


def test_the_log_is_followed_across_cuts_and_kept_small(tmp_path):
    log = tmp_path / "pgbouncer.log"
    log.write_text("old line\n")
    follower = LogFollower(log)
    assert follower.new_lines() == []  # what was there before is not news
    with log.open("a") as file:
        file.write("one\ntw")
    assert follower.new_lines() == ["one"]
    with log.open("a") as file:
        file.write("o\n")
    assert follower.new_lines() == ["two"]
    log.write_text("after a cut\n")  # shorter than what was read: read from the start
    assert follower.new_lines() == ["after a cut"]
    with log.open("a") as file:
        file.write("x" * MAX_LOG_BYTES + "\nlast\n")
    assert follower.new_lines()[-1] == "last"
    assert log.stat().st_size == 0  # read and cut back
