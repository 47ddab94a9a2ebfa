// The task list: GET /tasks with the filters of the URL, refreshed every 2 s so new tasks and status changes
// appear without a reload.
"use strict";

(() => {
  const { el, usd, count, seconds, when, getJSON, taskHref } = TL;
  const POLL_MS = 2000;
  const PAGE = 50;
  const FILTERS = ["q", "status", "source", "agent", "user", "since", "until", "sort"];
  const body = document.querySelector("#tasks tbody");
  const state = document.getElementById("list-state");
  const countLine = document.getElementById("list-count");
  const empty = document.getElementById("empty");
  const more = document.getElementById("more");
  const known = new Map(); // task_id -> status + updated_at seen last time, to flag what changed
  let wanted = PAGE; // rows the user asked for (grows with "Load more")
  let nextCursor = null;
  let timer = null;
  let firstLoad = true;

  function query(limit, cursor) {
    const from = new URLSearchParams(location.search);
    const to = new URLSearchParams();
    for (const name of FILTERS) {
      const value = from.get(name);
      if (value) to.set(name, value);
    }
    to.set("limit", String(limit));
    if (cursor) to.set("cursor", cursor);
    return "/tasks?" + to.toString();
  }

  function row(task) {
    const tokens = `${count(task.input_tokens)} / ${count(task.output_tokens)}`;
    const link = el("a", { href: taskHref(task.task_id) }, task.task_id);
    const status = el("span", { class: "badge " + (task.status || "unknown") }, task.status || "unknown");
    const tr = el(
      "tr",
      { dataset: { taskId: task.task_id, status: task.status || "" } },
      el("td", {}, status),
      el("td", { class: "id" }, link),
      el("td", {}, task.source || "—"),
      el("td", {}, task.agent_type || "—"),
      el("td", { title: task.created_at || "" }, when(task.created_at)),
      el("td", { class: "num" }, task.status === "running" && task.duration_seconds == null ? "…" : seconds(task.duration_seconds)),
      el("td", { class: "num" }, usd(task.cost_usd)),
      el("td", { class: "num" }, tokens),
      el("td", { class: "message", title: task.message || "" }, task.message || ""),
    );
    if (task.error) tr.classList.add("has-error");
    return tr;
  }

  function render(tasks) {
    const rows = [];
    for (const task of tasks) {
      const tr = row(task);
      const before = known.get(task.task_id);
      const now = `${task.status}|${task.updated_at}`;
      if (!firstLoad && before !== now) tr.classList.add("fresh");
      known.set(task.task_id, now);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
    empty.hidden = tasks.length > 0;
    countLine.textContent = tasks.length ? `${tasks.length} task${tasks.length === 1 ? "" : "s"}${nextCursor ? "+" : ""}` : "";
    more.hidden = !nextCursor;
    firstLoad = false;
  }

  // One refresh: the first `wanted` rows, fetched in pages of at most 500 (the API's limit).
  async function refresh() {
    const tasks = [];
    let cursor = null;
    do {
      const page = await getJSON(query(Math.min(500, wanted - tasks.length), cursor));
      tasks.push(...page.tasks);
      cursor = page.next_cursor;
    } while (cursor && tasks.length < wanted);
    nextCursor = cursor;
    render(tasks);
  }

  async function tick() {
    clearTimeout(timer);
    if (!document.hidden) {
      try {
        await refresh();
        state.textContent = "live";
        state.className = "live-state live";
      } catch (error) {
        state.textContent = error.message;
        state.className = "live-state error";
      }
    }
    timer = setTimeout(tick, POLL_MS);
  }

  more.addEventListener("click", () => {
    wanted += PAGE;
    tick();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) tick();
  });
  tick();
})();
