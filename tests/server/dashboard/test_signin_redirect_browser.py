"""After signing in, a real headless Chromium stays on the collector's origin whatever `next`
the sign-in link carried (issue 12, item 12): browsers drop tabs and newlines in URLs and read
a backslash as a slash, so `/%09/evil.example` would become `//evil.example`, another site.

Needs Debian's `chromium` and the `playwright` package (never `playwright install`)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS

from conftest import make_keys, start_collector, stop_collector
from mcpmeter.storage import open_store

pytestmark = pytest.mark.slow

HOSTILE = ["/%09/evil.example", "/%0A/evil.example", "/%5Cevil.example", "%2F%2Fevil.example", "https://evil.example/",
           "/%09%5C/evil.example"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed: apt-get install -y chromium fonts-liberation (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_signing_in_never_leaves_the_collectors_origin(tmp_path, browser):
    db = tmp_path / "c.db"
    store = open_store(str(db))
    keys = make_keys(store)
    store.close()
    c = start_collector(db, env={"MCPMETER_LOCAL_TRUST": "false"})
    origin = urlsplit(c.url).netloc
    try:
        for target in HOSTILE:
            context = browser.new_context()
            context.route("**/*", lambda route: route.abort() if urlsplit(route.request.url).netloc != origin
                          else route.continue_())  # nothing leaves the machine; the URL still tells where it went
            page = context.new_page()
            page.goto(f"{c.url}/signin?next={target}")
            page.fill("#key", keys.read)
            page.click("#signin-submit")
            page.wait_for_function("() => location.pathname !== '/signin'", timeout=15_000)
            page.wait_for_load_state()
            assert urlsplit(page.url).netloc == origin and urlsplit(page.url).path == "/", (target, page.url)
            context.close()
        context = browser.new_context()  # a good `next` is still followed
        page = context.new_page()
        page.goto(f"{c.url}/signin?next=%2Fadmin")
        page.fill("#key", keys.admin)
        page.click("#signin-submit")
        page.wait_for_url(c.url + "/admin", timeout=15_000)
        context.close()
    finally:
        stop_collector(c)
