"""The routes' listing (poolers/routes.py), which the activator and the registrar
ask for twice a second: read again only when the directory changed."""

import os
import time

from poolers import routes as routes_module
from poolers.routes import Routes


def _settle(routes: Routes) -> None:
    """As if the last change were long ago (the listing trusts an old mtime)."""
    past = time.time() - 10 * routes_module.MTIME_TRUSTED_AFTER
    os.utime(routes.root, (past, past))


def test_the_listing_is_read_again_only_when_the_routes_change(tmp_path):
    routes = Routes(tmp_path / "routes", service_user="nobody")
    routes.root.mkdir()
    assert routes.instance_ids() == []
    routes.point("t1", tmp_path / "t1-socket")
    # Changed just now: read again, even if the clock tick hid a second change.
    assert routes.instance_ids() == ["t1"]
    routes.point("t2", tmp_path / "t2-socket")
    assert routes.instance_ids() == ["t1", "t2"]
    _settle(routes)
    first = routes.instance_ids()
    assert routes.instance_ids() is first  # unchanged: the same list, nothing read

    routes.point("t3", tmp_path / "t3-socket")
    assert routes.instance_ids() == ["t1", "t2", "t3"]
    _settle(routes)
    routes.remove("t1")
    assert routes.instance_ids() == ["t2", "t3"]
    # Re-pointing (a sleep or a wake) renames in the directory: read again, same ids.
    _settle(routes)
    listed = routes.instance_ids()
    routes.point("t2", routes.activator_dir("t2"))
    assert routes.instance_ids() == listed


def test_a_listing_is_not_trusted_while_its_mtime_is_fresh(tmp_path):
    """Two changes in one tick of the coarse clock leave one mtime: a listing read
    between them must not be kept as current."""
    routes = Routes(tmp_path / "routes", service_user="nobody")
    routes.root.mkdir()
    routes.point("t1", tmp_path / "t1-socket")
    stamp = routes.root.stat().st_mtime_ns
    assert routes.instance_ids() == ["t1"]
    routes.point("t2", tmp_path / "t2-socket")
    os.utime(routes.root, ns=(stamp, stamp))  # the second change in the same tick
    assert routes.instance_ids() == ["t1", "t2"]
