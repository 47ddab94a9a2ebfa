"""The web page in a real browser (Debian's chromium, headless) against a real ``tasklogger serve`` process.

The list shows a published task and search finds it; the task view shows one timeline in stream order with tool
calls paired to their results, errors highlighted and the final result; a running task's timeline grows without a
reload, also across a restart of the service; untrusted task data is shown as text, never run; the page makes no
request to any other host. The screenshots of the README are taken here.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Browser, expect

from tasklogger import demo
from tests.browser.conftest import Visit
from tests.support import Publisher, RedisProcess, ServiceProcess, wait_until

#: Untrusted text that would run if the page ever inserted task data as HTML.
XSS = '<script>window.__xss = 1</script><img src="x" onerror="window.__xss = 2"><b>bold?</b>'


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def start_task(pub: Publisher, task_id: str, marker: str) -> list[str]:
    """The first steps of a task as producers publish them; returns their stream ids."""
    hook = str(uuid.uuid4())
    first = len(pub.ids)
    source = {"source": "github", "event_type": "issue_comment"}
    pub.event("webhook:received", webhook_event_id=hook, data={**source, "payload_size": 812}, timestamp=now())
    pub.event("webhook:task_created", webhook_event_id=hook, data={**source, "task_id": task_id,
              "input_message": f"fix the {marker} bug"}, timestamp=now())  # fmt: skip
    pub.event(
        "task:created",
        task_id=task_id,
        timestamp=now(),
        data={
            "source": "github",
            "assigned_agent": "coding",
            "input_message": f"fix the {marker} bug",
            "user_id": "ana",
        },
    )
    pub.event("task:started", task_id=task_id, data={"session_id": "s-1"}, timestamp=now())
    return pub.ids[first:]


def work(pub: Publisher, task_id: str) -> list[str]:
    """Thinking, two tool calls (the second fails), metrics and a user input; returns their stream ids."""
    first = len(pub.ids)
    pub.event("task:thinking", task_id=task_id, data={"content": "Let me look. " * 200}, timestamp=now())
    pub.event("task:tool_call", task_id=task_id, timestamp=now(),
              data={"name": "read_file", "input": {"path": "src/app.py"}, "_tool_use_id": "toolu_1"})  # fmt: skip
    pub.event("task:tool_result", task_id=task_id, timestamp=now(),
              data={"name": "read_file", "content": XSS, "is_error": False, "_tool_use_id": "toolu_1"})  # fmt: skip
    pub.event("task:tool_call", task_id=task_id, timestamp=now(), data={"name": "bash", "input": {"cmd": "pytest"}})
    pub.event("task:tool_result", task_id=task_id, timestamp=now(),
              data={"name": "bash", "content": "1 failed", "is_error": "true"})  # fmt: skip
    pub.event("task:metrics", task_id=task_id, timestamp=now(),
              data={"cost_usd": "0.0420", "input_tokens": "5000", "output_tokens": 300})  # fmt: skip
    pub.event("task:user_input", task_id=task_id, timestamp=now(), data={"content": "go ahead", "question_type": "c"})
    return pub.ids[first:]


def finish(pub: Publisher, task_id: str, marker: str) -> str:
    return pub.event("task:completed", task_id=task_id, timestamp=now(), data={
        "status": "completed", "result": f"fixed the {marker} bug", "cost_usd": "0.0500", "input_tokens": 6000,
        "output_tokens": 400, "duration_seconds": "12.5", "exit_code": 0})  # fmt: skip


def timeline_ids(visit: Visit) -> list[str]:
    return [str(x) for x in visit.page.eval_on_selector_all("#timeline > li", "items => items.map(i => i.dataset.id)")]


def test_task_view_shows_the_timeline_and_the_final_result(visit: Visit, web_publisher: Publisher) -> None:
    task_id = f"view-{uuid.uuid4().hex[:8]}"
    ids = start_task(web_publisher, task_id, "login") + work(web_publisher, task_id)
    ids.append(finish(web_publisher, task_id, "login"))
    page = visit.page

    page.goto(f"/t/{task_id}")

    expect(page.locator("#status")).to_have_text("completed")
    expect(page.locator("#final-body")).to_contain_text("fixed the login bug")
    # One item per record in stream order, tool results drawn inside their calls (ids 5 and 7 of the task).
    paired = {ids[6], ids[8]}
    expect(page.locator("#timeline > li")).to_have_count(len(ids) - len(paired))
    assert timeline_ids(visit) == [i for i in ids if i not in paired]
    read, bash = page.locator('#timeline > li[data-type="task:tool_call"]').all()
    expect(read.locator(".result")).to_contain_text(XSS)  # shown as text...
    expect(read.locator(".result .took")).to_contain_text("after ")
    expect(bash).to_have_class("item lane-agent t-tool_call error")
    expect(bash.locator(".result.error")).to_contain_text("1 failed")
    thinking = page.locator('#timeline > li[data-type="task:thinking"] details')
    expect(thinking).not_to_have_attribute("open", "")
    expect(page.locator('#timeline > li[data-type="task:user_input"]')).to_have_class("item lane-user t-user_input")
    expect(page.locator("#tools table")).to_contain_text("read_file")
    expect(page.locator("#f-cost")).to_have_text("$0.0500")
    expect(page.locator("#f-exit-code")).to_have_text("0")
    expect(page.locator("#f-events")).to_have_text(f"{len(ids)} (2 webhook, {len(ids) - 3} agent, 1 user)")
    assert page.locator("#download").get_attribute("href") == f"/tasks/{task_id}/logs"
    assert page.evaluate("window.__xss") is None  # ...and never run
    assert page.locator("#timeline script, #timeline img").count() == 0
    assert visit.foreign_requests() == []
    assert visit.errors == []


def test_a_running_task_grows_live_without_reload_and_across_a_restart(
    visit: Visit, web_publisher: Publisher, web_service: ServiceProcess
) -> None:
    task_id = f"live-{uuid.uuid4().hex[:8]}"
    ids = start_task(web_publisher, task_id, "live")
    page = visit.page
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.goto(f"/t/{task_id}")
    expect(page.locator("#status")).to_have_text("running")
    expect(page.locator("#timeline > li")).to_have_count(len(ids))

    ids.append(web_publisher.event("task:output", task_id=task_id, data={"content": "first live line"}))
    expect(page.locator("#timeline")).to_contain_text("first live line")
    # The connection drops (the service restarts); the page resumes with no gap and no duplicate.
    web_service.kill()
    web_service.start()
    ids.append(web_publisher.event("task:output", task_id=task_id, data={"content": "after the restart"}))
    expect(page.locator("#timeline")).to_contain_text("after the restart", timeout=30_000)
    ids.append(finish(web_publisher, task_id, "live"))
    expect(page.locator("#status")).to_have_text("completed")

    expect(page.locator("#timeline > li")).to_have_count(len(ids))
    assert timeline_ids(visit) == ids
    assert len(navigations) == 1, navigations
    assert any(f"/tasks/{task_id}/events" in url for url in visit.requests)  # live over SSE, not polling
    assert visit.errors == []


def test_the_list_shows_a_published_task_and_search_finds_it(visit: Visit, web_publisher: Publisher) -> None:
    marker = f"zebra{uuid.uuid4().hex[:6]}"
    found, other = f"list-{uuid.uuid4().hex[:8]}", f"list-{uuid.uuid4().hex[:8]}"
    start_task(web_publisher, found, marker)
    finish(web_publisher, found, marker)
    start_task(web_publisher, other, "unrelated")
    page = visit.page

    page.goto("/")
    expect(page.locator(f'tr[data-task-id="{found}"]')).to_be_visible()
    expect(page.locator(f'tr[data-task-id="{other}"]')).to_be_visible()
    page.fill('input[name="q"]', marker)
    page.click('button[type="submit"]')

    expect(page.locator(f'tr[data-task-id="{found}"]')).to_be_visible()
    expect(page.locator(f'tr[data-task-id="{other}"]')).to_have_count(0)
    expect(page.locator(f'tr[data-task-id="{found}"] .badge')).to_have_text("completed")
    page.click(f'tr[data-task-id="{found}"] a')
    expect(page.locator(".task-id")).to_have_text(found)
    assert visit.foreign_requests() == []
    assert visit.errors == []


def test_new_tasks_and_status_changes_appear_in_the_list_without_reload(visit: Visit, web_publisher: Publisher) -> None:
    page = visit.page
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.goto("/")
    expect(page.locator("#list-state")).to_have_text("live")
    task_id = f"new-{uuid.uuid4().hex[:8]}"

    start_task(web_publisher, task_id, "fresh")
    row = page.locator(f'tr[data-task-id="{task_id}"]')
    expect(row.locator(".badge")).to_have_text("running")
    finish(web_publisher, task_id, "fresh")
    expect(row.locator(".badge")).to_have_text("completed")

    assert len(navigations) == 1, navigations


def test_screenshots_of_a_demo(visit: Visit, web_redis: RedisProcess, tmp_path: Path, screenshots: Path) -> None:
    """The README's screenshots: the list and a task of ``tasklogger demo`` alone, at a laptop's screen size."""
    # A database of its own, so that only the demo's tasks are in the pictures.
    url = web_redis.url.removesuffix("/0") + "/1"
    service = ServiceProcess(tmp_path / "logs", url).start()
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        batch = demo.scripts(6, seed=7)
        demo.publish(client, "task_events", batch, speed=500)
        running = demo.scripts(1, seed=8)[0]
        running.steps = running.steps[:20]  # half-way through: still running in the picture
        demo.publish(client, "task_events", [running], speed=500)
        github = batch[0].task_id
        wait_until(lambda: (service.get(f"/tasks/{github}/logs")[1] or {}).get("final_result") is not None)
        page = visit.page
        base = f"http://127.0.0.1:{service.port}"

        page.goto(f"{base}/")
        for script in batch:
            expect(page.locator(f'tr[data-task-id="{script.task_id}"] .badge')).not_to_have_text("running")
        page.screenshot(path=str(screenshots / "task-list.png"))
        page.goto(f"{base}/t/{github}")
        expect(page.locator("#status")).to_have_text("completed")
        expect(page.locator("#tools table")).to_be_visible()
        page.screenshot(path=str(screenshots / "task-view.png"))
        page.locator('#timeline > li[data-type="task:tool_call"]').nth(3).scroll_into_view_if_needed()
        # Items off screen are laid out lazily (content-visibility): let two frames draw the new ones.
        page.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
        page.screenshot(path=str(screenshots / "task-timeline.png"))
        assert all((screenshots / name).stat().st_size > 10_000 for name in ("task-list.png", "task-view.png"))
        assert [u for u in visit.requests if not u.startswith(base) and not u.startswith(visit.base_url)] == []
        assert visit.errors == []
    finally:
        client.close()
        service.kill()


@pytest.fixture
def token_service(web_redis: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> ServiceProcess:
    # Its own consumer group: it reads the whole stream without taking entries from the other service.
    service = ServiceProcess(tmp_path_factory.mktemp("web-auth") / "logs", web_redis.url,
                             env={"TASKLOGGER_API_TOKEN": "s3cret-token-0123456789",
                                  "REDIS_CONSUMER_GROUP": "web-auth"}).start()  # fmt: skip
    return service


def test_with_an_api_token_the_page_asks_for_it_once(
    browser: Browser, token_service: ServiceProcess, web_publisher: Publisher
) -> None:
    visit = Visit(browser, f"http://127.0.0.1:{token_service.port}")
    try:
        task_id = f"auth-{uuid.uuid4().hex[:8]}"
        start_task(web_publisher, task_id, "auth")
        page = visit.page
        page.goto(f"/t/{task_id}")
        expect(page).to_have_url(f"{visit.base_url}/login?next=%2Ft%2F{task_id}")
        page.fill('input[name="token"]', "wrong-token-0123456789")
        page.click('button[type="submit"]')
        expect(page.locator("#login-error")).to_have_text("Wrong token.")
        page.fill('input[name="token"]', "s3cret-token-0123456789")
        page.click('button[type="submit"]')
        expect(page).to_have_url(f"{visit.base_url}/t/{task_id}")
        expect(page.locator('#timeline > li[data-type="task:started"]')).to_have_count(1)  # SSE with the cookie
        cookies = {c["name"]: c for c in visit.context.cookies()}
        assert cookies["tasklogger_token"]["httpOnly"] is True
        assert visit.errors == []
    finally:
        visit.close()
        token_service.kill()


def test_a_task_page_opened_before_the_task_exists_waits_for_it(visit: Visit, web_publisher: Publisher) -> None:
    task_id = f"early-{uuid.uuid4().hex[:8]}"
    page = visit.page

    response = page.goto(f"/t/{task_id}")
    assert response is not None and response.status == 404
    expect(page.locator("#waiting")).to_be_visible()
    ids = start_task(web_publisher, task_id, "early")

    expect(page.locator("#timeline > li")).to_have_count(len(ids))
    expect(page.locator("#status")).to_have_text("running")
    expect(page.locator("#f-source")).to_have_text("github")
    expect(page.locator("#waiting")).to_have_count(0)
    unsafe = page.goto("/t/.hidden")
    assert unsafe is not None and unsafe.status == 400
    expect(page.locator("p.error")).to_contain_text("Not a valid task id")


def test_the_list_filters_by_url_and_pages_with_load_more(visit: Visit, web_publisher: Publisher) -> None:
    source = f"bulk{uuid.uuid4().hex[:6]}"
    for n in range(55):
        data = {"source": source, "assigned_agent": "triage", "input_message": f"item {n}"}
        web_publisher.event("task:created", task_id=f"{source}-{n:02d}", timestamp=now(), data=data)
    page = visit.page

    page.goto(f"/?source={source}&sort=created_at")
    expect(page.locator("#tasks tbody tr")).to_have_count(50)
    expect(page.locator('input[name="source"]')).to_have_value(source)
    assert page.locator("#tasks tbody tr").first.get_attribute("data-task-id") == f"{source}-00"
    page.click("#more")

    expect(page.locator("#tasks tbody tr")).to_have_count(55)
    expect(page.locator("#more")).to_be_hidden()
    assert page.locator("#tasks tbody tr").last.get_attribute("data-task-id") == f"{source}-54"
