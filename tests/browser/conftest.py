"""Fixtures of the browser tests: Debian's chromium driven by Playwright (never a downloaded browser), and a real
``tasklogger serve`` process over a private redis-server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

from tests.support import Publisher, RedisProcess, ServiceProcess, running_redis, running_service

#: Where the README's screenshots live; the tests rewrite them only when TASKLOGGER_UPDATE_SCREENSHOTS=1, so a
#: plain test run leaves the working tree clean.
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """The directory the screenshot test writes to: docs/screenshots when updating them, else a temp dir."""
    if os.environ.get("TASKLOGGER_UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return DOCS_SCREENSHOTS
    return tmp_path


# The 2-core CI box also runs the service and redis-server: give each expectation room (the default is 5 s).
expect.set_options(timeout=15_000)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("no chromium on PATH (apt-get install chromium); the browser tests need Debian's chromium")
    return path


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="session")
def browser(playwright: Playwright, chromium_path: str) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=chromium_path, headless=True)
    yield browser
    browser.close()


class Visit:
    """A browser context on the service that records every request the page makes and every script error."""

    def __init__(self, browser: Browser, base_url: str) -> None:
        self.base_url = base_url
        self.context: BrowserContext = browser.new_context(
            base_url=base_url, viewport={"width": 1440, "height": 900}, device_scale_factor=1
        )
        self.context.set_default_timeout(15_000)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.on("request", lambda request: self.requests.append(request.url))
        self.page: Page = self.context.new_page()
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def foreign_requests(self) -> list[str]:
        """Requests that did not go to the service itself (there must be none: no CDN, no tracking)."""
        return [url for url in self.requests if not url.startswith(self.base_url) and not url.startswith("data:")]

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def web_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    with running_redis(tmp_path_factory.mktemp("web-redis")) as proc:
        yield proc


@pytest.fixture(scope="module")
def web_service(web_redis: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with running_service(tmp_path_factory.mktemp("web") / "logs", web_redis.url) as service:
        yield service


@pytest.fixture
def web_publisher(web_redis: RedisProcess) -> Iterator[Publisher]:
    client: redis.Redis = web_redis.client()
    yield Publisher(client)
    client.close()


@pytest.fixture
def visit(browser: Browser, web_service: ServiceProcess) -> Iterator[Visit]:
    v = Visit(browser, f"http://127.0.0.1:{web_service.port}")
    yield v
    v.close()
