"""The web page at ``/`` in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Playwright only drives the system browser here (``executable_path``); it never downloads one.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium; CI installs it)", allow_module_level=True)
pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")

from playwright.sync_api import expect, sync_playwright

from prodimg.serving import BackgroundServer, ServiceConfig, add_key, create_app
from prodimg.testing import make_tiny_pipeline


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    _, key = add_key(tmp / "keys.json", "browser", ["generate"])
    pipe = make_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    app = create_app(pipe, ServiceConfig(rate_limit=0.0, audit_log=None), tmp / "keys.json")
    with BackgroundServer(app) as running:
        running.key = key
        yield running


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh --user-data-dir
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            accept_downloads=True,
            timeout=60_000,
        )
        page = context.pages[0] if context.pages else context.new_page()
        page.console_errors = []
        page.on("console", lambda msg: msg.type == "error" and page.console_errors.append(msg.text))
        yield page
        context.close()


def test_generate_in_the_browser(server, page):
    page.goto(server.url + "/")
    expect(page).to_have_title("prodimg: product images from text")

    # Without a key the service refuses and the page says why.
    page.fill("#prompt", "red striped dress")
    page.fill("#n", "3")
    page.fill("#seed", "42")
    page.click("#generate")
    expect(page.locator("#error")).to_contain_text("Error 401")
    expect(page.locator("#error")).to_contain_text("API key")
    expect(page.locator("#results figure")).to_have_count(0)

    # With a key: three images appear, each with a download link named after prompt and seed.
    page.fill("#api-key", server.key)
    page.click("#generate")
    figures = page.locator("#results figure")
    expect(figures).to_have_count(3, timeout=30_000)
    expect(page.locator("#error")).to_have_text("")
    expect(page.locator("#status")).to_contain_text("Seed 42")
    for i in range(3):
        img = figures.nth(i).locator("img")
        expect(img).to_have_js_property("complete", True)
        assert img.evaluate("el => el.naturalWidth") == 16
        link = figures.nth(i).get_by_role("link", name="Download")
        assert link.get_attribute("download") == f"red-striped-dress-seed{42 + i}.png"
    with page.expect_download() as download_info:
        figures.nth(0).get_by_role("link", name="Download").click()
    download = download_info.value
    assert download.suggested_filename == "red-striped-dress-seed42.png"
    shown = Path(download.path()).read_bytes()

    # The page shows exactly what the API returns for the same request.
    api = httpx.post(
        server.url + "/v1/images/generations",
        json={"prompt": "red striped dress", "n": 3, "seed": 42},
        headers={"Authorization": f"Bearer {server.key}"},
        timeout=60,  # httpx's default 5 s is too short on a loaded 2-core machine
    ).json()
    assert base64.b64decode(api["data"][0]["b64_json"]) == shown

    # The key lives in sessionStorage: it survives a reload of the tab.
    page.reload()
    expect(page.locator("#api-key")).to_have_value(server.key)

    # A refused request (n over the limit) shows the service's message.
    page.fill("#prompt", "blue hat")
    page.fill("#n", "9")
    page.evaluate("document.getElementById('n').removeAttribute('max')")  # get past the form's own check
    page.click("#generate")
    expect(page.locator("#error")).to_contain_text("Error 422: n must be between 1 and 8")
    assert not [e for e in page.console_errors if "Content Security Policy" in e]
