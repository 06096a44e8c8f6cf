"""The product's pages in a real browser: Debian's headless Chromium, driven by
Playwright, against the live web server, the real worker, pooler and instances.

Screenshots of the main pages are saved under var/screenshots/ (test artifacts;
the README's pictures come from there).
"""

import os
import re

import psycopg
import pytest
from django.contrib.auth import get_user_model

from dbaas.env import BASE_DIR
from tenants.models import Event, Restore, Tenant
from tests.conftest import connect, wait_until

# Playwright's sync API runs an event loop in this thread; the ORM calls the tests
# make between browser steps are still plain synchronous code.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = pytest.mark.timeout(240)
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = BASE_DIR / "var" / "screenshots"
PASSWORD = "correct horse battery"
# As root and on a closed network: no sandbox, no background calls to Google.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (make test does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    context.set_default_timeout(30_000)
    page = context.new_page()
    # Every page is served with a Content-Security-Policy: anything it blocks
    # (an inline script, a style from elsewhere) is a broken page.
    blocked: list[str] = []
    page.on(
        "console",
        lambda msg: blocked.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    yield page
    context.close()
    assert not blocked, blocked


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_up(page, email: str) -> None:
    page.goto("/signup")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url(re.compile(r"/$"))


def create_database(page, name: str) -> None:
    page.goto("/")
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Create database").click()


def copied_string(page, box_id: str) -> str:
    """Press the copy button next to the string, and read the clipboard."""
    page.locator(f"[data-copy='{box_id}']").click()
    page.wait_for_function("document.querySelector('[data-copy]').textContent === 'Copied'")
    return page.evaluate("navigator.clipboard.readText()")


def test_sign_up_create_copy_connect_reset_quota_delete(live, page):
    page.goto("/signup")
    screenshot(page, "signup")
    sign_up(page, "browser@example.com")
    screenshot(page, "dashboard-empty")

    # A refused name says why, on the page.
    create_database(page, "Bad Name")
    assert "lowercase letters" in page.locator(".messages").inner_text()

    create_database(page, "shop")
    page.wait_for_url(re.compile(r"/databases/\d+/credentials$"))
    screenshot(page, "connection-string")
    url = copied_string(page, "connection-string")
    assert url == page.locator("#connection-string").inner_text().strip()
    assert url.startswith("postgresql://shop_") and url.endswith("?sslmode=verify-full")
    with connect(url) as conn:
        conn.execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2)")
        conn.commit()

    # The database page: back up now (the page refreshes itself until it is done).
    page.get_by_role("link", name="Go to shop").click()
    page.get_by_role("button", name="Back up now").click()
    assert "started" in page.locator(".messages").inner_text()
    page.locator("#backups .state-done").wait_for()
    screenshot(page, "database")
    # Restoring in place asks first: dismissed, nothing happens; accepted, it runs.
    restores = Restore.objects.filter(tenant__name="shop")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Restore").click()
    page.wait_for_timeout(500)
    assert not restores.exists()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Restore").click()
    wait_until(lambda: restores.filter(state="done").exists(), timeout=60)
    # Reset the password: the old string is refused.
    page.get_by_role("button", name="Reset password").click()
    page.wait_for_url(re.compile(r"/credentials$"))
    new_url = page.locator("#connection-string").inner_text().strip()
    assert new_url != url
    with pytest.raises(psycopg.OperationalError):
        connect(url).close()
    with connect(new_url) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (2,)

    # Up to the plan's quota, then a clear message.
    for name in ("blog", "cache"):
        create_database(page, name)
        page.wait_for_url(re.compile(r"/credentials$"))
    page.goto("/")
    assert "3 of 3 databases" in page.locator("#database-usage").inner_text()
    assert "reached your plan's limit of 3 databases" in page.content()
    screenshot(page, "dashboard-quota")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    screenshot(page, "dashboard-phone")
    page.set_viewport_size({"width": 1280, "height": 900})

    # Delete, with the name typed.
    page.get_by_role("link", name="shop").click()
    page.get_by_role("link", name="Delete shop…").click()
    page.get_by_label("Type shop to confirm").fill("shops")
    page.get_by_role("button", name="Delete shop").click()
    assert "Type the database's name" in page.locator(".messages").inner_text()
    page.get_by_label("Type shop to confirm").fill("shop")
    screenshot(page, "delete")
    page.get_by_role("button", name="Delete shop").click()
    page.wait_for_url(re.compile(r"/$"))
    assert "shop is being deleted" in page.locator(".messages").inner_text()
    tenant = Tenant.objects.get(name="shop", account__user__email="browser@example.com")
    assert tenant.state in ("deleting", "deleted")
    with pytest.raises(psycopg.OperationalError):
        connect(new_url).close()


def test_operator_sees_hosts_restarts_a_tenant_and_reads_its_timeline(live, page, alice):
    from tests.helpers import create, measure

    db = create(alice, "opsview")
    tenant = Tenant.objects.get(pk=db["id"])
    measure(tenant.host)
    get_user_model().objects.create_superuser("ops", "ops@example.com", "ops password 1")
    # A developer's account is no way into the console.
    page.goto("/admin/")
    page.get_by_label("Username").fill("alice@example.com")
    page.get_by_label("Password").fill("correct horse battery staple")
    page.get_by_role("button", name="Log in").click()
    assert "staff account" in page.locator(".errornote").inner_text()

    page.get_by_label("Username").fill("ops")
    page.get_by_label("Password").fill("ops password 1")
    page.get_by_role("button", name="Log in").click()
    capacity = page.locator("#host-capacity")
    assert tenant.host.name in capacity.inner_text()
    screenshot(page, "admin-dashboard")

    page.goto("/admin/tenants/tenant/")
    page.get_by_role("row", name=re.compile("opsview")).get_by_role("checkbox").check()
    page.locator("select[name=action]").select_option("restart_tenants")
    page.get_by_role("button", name="Go").click()
    assert "restart: queued for 1 tenant" in page.locator(".messagelist").inner_text().lower()
    screenshot(page, "admin-tenants")

    wait_until(
        lambda: Event.objects.filter(tenant=tenant, action="restart", actor="admin:ops").exists()
    )
    page.goto(f"/admin/tenants/tenant/{tenant.pk}/change/")
    timeline = page.locator("#events-group").inner_text()
    assert "restart" in timeline and "admin:ops" in timeline
    screenshot(page, "admin-tenant-timeline")
    with connect(db["connection_string"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_the_core_flow_works_without_javascript(live, browser, live_server):
    context = browser.new_context(base_url=live_server.url, java_script_enabled=False)
    page = context.new_page()
    try:
        sign_up(page, "nojs@example.com")
        create_database(page, "plain")
        page.wait_for_url(re.compile(r"/credentials$"))
        url = page.locator("#connection-string").inner_text().strip()
        with connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        page.get_by_role("link", name="Go to plain").click()
        page.get_by_role("button", name="Put to sleep").click()
        assert "is asleep" in page.locator(".messages").inner_text()
        page.get_by_role("button", name="Wake up").click()
        assert "plain is running" in page.locator(".messages").inner_text()
    finally:
        context.close()


def test_the_api_docs_page_shows_every_operation(db, page):
    """GET /api/docs: Swagger UI from this server's static files, under the page CSP
    (the `page` fixture fails on anything it blocks), listing every operation."""
    document = page.request.get("/api/v1/openapi.json").json()
    operations = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    page.goto("/api/docs")
    page.wait_for_selector(".opblock")
    shown = set()
    for block in page.locator(".opblock").all():
        method = block.locator(".opblock-summary-method").inner_text().strip()
        path = block.locator(".opblock-summary-path").get_attribute("data-path")
        shown.add((method, path))
    assert shown == operations
    screenshot(page, "api-docs")
