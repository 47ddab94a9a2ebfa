// The task view: one timeline merging webhook flow, agent output and user inputs in stream-id order, tool calls
// paired with their results, a per-tool breakdown, and live growth over GET /tasks/{id}/events (SSE).
"use strict";

(() => {
  const { el, num, usd, count, seconds, when, compareIds, getJSON } = TL;
  const root = document.getElementById("task");
  const taskId = root.dataset.taskId;
  const base = "/tasks/" + encodeURIComponent(taskId);
  const timeline = document.getElementById("timeline");
  const liveState = document.getElementById("live-state");
  const COLLAPSE_CHARS = 1200; // longer bodies start collapsed
  const COLLAPSE_LINES = 16;

  const items = []; // {id, lane, record, node}, sorted by stream id
  const seen = new Set(); // stream ids already rendered: a resumed stream never draws one twice
  const callsById = new Map(); // _tool_use_id -> call slot
  const toolSeconds = new Map(); // stream id of a call -> seconds until its result
  const openCalls = new Map(); // tool name -> call slots still waiting for a result (FIFO)
  let finalShown = false;
  let lastId = null; // highest stream id drawn
  // Follow new records only once the reader has scrolled to the end of the page themselves.
  let following = false;
  window.addEventListener("scroll", () => {
    following = window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 40;
  }, { passive: true });

  // -- small renderers ----------------------------------------------------------------------------------------

  const truthy = (v) => v === true || v === 1 || (typeof v === "string" && ["true", "1", "yes"].includes(v.toLowerCase()));
  // Objects read best on one line when short, indented when not.
  function asText(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "string") return v;
    const flat = JSON.stringify(v);
    return flat.length <= 160 ? flat : JSON.stringify(v, null, 2);
  }

  function firstLine(text, limit = 120) {
    const line = text.trim().split("\n", 1)[0];
    return line.length > limit ? line.slice(0, limit) + "…" : line;
  }

  // A body of text: shown in full when short, else a collapsed <details> whose summary is its first line.
  function body(value, label, { open = false, collapse = false } = {}) {
    const text = asText(value);
    if (!text) return null;
    const long = text.length > COLLAPSE_CHARS || text.split("\n").length > COLLAPSE_LINES;
    if (!long && !collapse) return el("pre", { class: "text" }, text);
    const size = text.length >= 1024 ? (text.length / 1024).toFixed(1) + " KB" : text.length + " chars";
    return el(
      "details",
      { class: "body", open },
      el("summary", {}, el("span", { class: "label" }, label), ` (${size}) `, el("span", { class: "preview" }, firstLine(text))),
      el("pre", { class: "text" }, text),
    );
  }

  function kv(pairs) {
    const shown = pairs.filter(([, v]) => v !== null && v !== undefined && v !== "");
    if (!shown.length) return null;
    return el("span", { class: "kv" }, shown.map(([k, v]) => el("span", {}, el("b", {}, k + " "), asText(v))));
  }

  function laneOf(file, type) {
    if (file === "webhook_flow" || file === "02-webhook-flow.jsonl") return "webhook";
    if (file === "user_inputs" || file === "03-user-inputs.jsonl") return "user";
    if (file === "agent_output" || file === "03-agent-output.jsonl") return "agent";
    const ns = String(type || "").split(":")[0];
    return ["webhook", "response", "notification"].includes(ns) ? "webhook" : type === "task:user_input" ? "user" : "agent";
  }

  // -- one record -> its timeline content ----------------------------------------------------------------------

  const RENDER = {
    "webhook:received": (d) => ["Webhook received", kv([["source", d.source], ["event", d.event_type], ["bytes", d.payload_size]])],
    "webhook:validated": (d) => [
      truthy(d.signature_valid) ? "Signature valid" : "Signature NOT valid",
      kv([["source", d.source]]),
    ],
    "webhook:matched": (d) => ["Handler matched", kv([["handler", d.matched_handler], ["event", d.event_type]])],
    "webhook:task_created": (d) => ["Task created from the webhook", kv([["source", d.source]]), body(d.input_message, "message")],
    "webhook:payload": (d) => ["Webhook payload", body(d.payload, "payload", { collapse: true })],
    "webhook:skipped": (d) => ["Webhook skipped", kv([["reason", d.reason]])],
    "response:immediate": (d) => ["Immediate response", kv([["type", d.response_type], ["target", d.target]])],
    "notification:ops": (d) => ["Ops notified", kv([["type", d.notification_type], ["channel", d.channel]])],
    "task:created": (d) => [
      "Task created",
      kv([["agent", d.assigned_agent ?? d.agent_type], ["user", d.user_id], ["machine", d.machine_id]]),
      body(d.input_message, "input message"),
    ],
    "task:started": (d) => ["Agent started", kv([["session", d.session_id], ["conversation", d.conversation_id]])],
    "task:context_built": (d) => [
      "Context built",
      kv([["flow", d.flow_id]]),
      body(d.enriched_prompt, "enriched prompt", { collapse: true }),
      d.source_metadata ? body(d.source_metadata, "source metadata", { collapse: true }) : null,
    ],
    "task:thinking": (d) => [body(d.content, "thinking", { collapse: true })],
    "task:output": (d) => [body(d.content, "output")],
    "task:raw_output": (d) => [body(d.raw_output, "raw output", { collapse: true })],
    "task:metrics": (d) => [
      "Metrics",
      kv([["cost", d.cost_usd != null ? usd(d.cost_usd) : null], ["in", d.input_tokens], ["out", d.output_tokens]]),
    ],
    "task:user_input": (d) => ["User input", kv([["kind", d.question_type]]), body(d.content, "input")],
    "task:response_posted": (d) => [
      "Response posted",
      kv([["method", d.method], ["to", d.source], ["mcp", d.mcp_detected], ["fallback", d.fallback_posted]]),
    ],
    "task:completed": (d) => [
      "Completed",
      kv([["status", d.status], ["cost", d.cost_usd != null ? usd(d.cost_usd) : null], ["exit", d.exit_code]]),
      body(d.result, "result"),
    ],
    "task:failed": (d) => ["Failed", kv([["exit", d.exit_code]]), body(d.error, "error")],
    "knowledge:query": (d) => ["Knowledge query", kv([["kb", d.kb]]), body(d.query, "query")],
    "knowledge:result": (d) => ["Knowledge result", kv([["hits", d.hits]]), body(d.content ?? d.results, "result", { collapse: true })],
  };

  function isError(type, d) {
    return type === "task:failed" || truthy(d.is_error) || Boolean(d.error) || (type === "webhook:validated" && d.signature_valid != null && !truthy(d.signature_valid));
  }

  function toolCall(record, d) {
    const slot = el("div", { class: "result pending" }, "waiting for the result…");
    const call = { name: String(d.name ?? "?"), slot, node: null, id: record.id, ts: record.ts };
    const input = asText(d.input);
    const content = [
      el("span", { class: "tool-name" }, call.name),
      input && input.length <= 160 && !input.includes("\n") ? el("code", { class: "tool-input" }, input) : null,
      input && (input.length > 160 || input.includes("\n")) ? body(d.input, "input", { collapse: input.length > COLLAPSE_CHARS }) : null,
      slot,
    ];
    if (d._tool_use_id) callsById.set(String(d._tool_use_id), call);
    const queue = openCalls.get(call.name) || [];
    queue.push(call);
    openCalls.set(call.name, queue);
    return { content, call };
  }

  // A result goes into its call's card: by _tool_use_id, else the oldest unanswered call of the same tool.
  function pairResult(d) {
    let call = d._tool_use_id != null ? callsById.get(String(d._tool_use_id)) : undefined;
    const queue = openCalls.get(String(d.name ?? "?")) || [];
    if (!call) call = queue[0];
    if (!call || call.answered) return null;
    call.answered = true;
    const at = queue.indexOf(call);
    if (at >= 0) queue.splice(at, 1);
    return call;
  }

  function fillResult(call, d, record) {
    const error = truthy(d.is_error);
    // How long the tool took: from the call's timestamp to the result's (both the producer's clock).
    const took = (Date.parse(record.ts) - Date.parse(call.ts)) / 1000;
    if (Number.isFinite(took) && took >= 0) toolSeconds.set(call.id, took);
    call.slot.className = "result" + (error ? " error" : "");
    call.slot.replaceChildren(
      el("span", { class: "label", title: record.ts || "" }, error ? "error" : "result"),
      toolSeconds.has(call.id) ? el("span", { class: "took" }, " after " + seconds(took)) : null,
      body(d.content, error ? "error" : "result", { open: error }) || el("span", { class: "muted" }, " (empty)"),
    );
    if (error && call.node) call.node.classList.add("error");
  }

  function render(lane, record) {
    const type = String(record.type || "?");
    const d = record.data && typeof record.data === "object" ? record.data : {};
    let content;
    let call = null;
    if (type === "task:tool_call") {
      ({ content, call } = toolCall(record, d));
    } else if (type === "task:tool_result") {
      const paired = pairResult(d);
      if (paired) {
        fillResult(paired, d, record);
        return null; // drawn inside its call's card
      }
      content = [el("span", { class: "tool-name" }, String(d.name ?? "?")), body(d.content, "result")];
    } else {
      const renderer = RENDER[type];
      content = renderer ? renderer(d) : [body(d, "data", { collapse: true })];
    }
    const kind = type.replace(/^task:/, "");
    const li = el(
      "li",
      { class: `item lane-${lane} t-${kind.replace(/[^a-z0-9_-]/gi, "-")}${isError(type, d) ? " error" : ""}`, dataset: { id: record.id, type } },
      el("div", { class: "meta" }, el("time", { title: record.ts || "" }, when(record.ts).slice(11) || "—"), el("span", { class: "kind" }, kind)),
      el("div", { class: "content" }, content.map((c) => (typeof c === "string" ? el("div", { class: "headline" }, c) : c))),
    );
    if (call) call.node = li;
    return li;
  }

  // -- adding records ------------------------------------------------------------------------------------------

  function add(file, record) {
    if (!record || record.id == null || seen.has(record.id)) return;
    seen.add(record.id);
    if (lastId === null || compareIds(record.id, lastId) > 0) lastId = String(record.id);
    const lane = laneOf(file, record.type);
    const item = { id: record.id, lane, record, node: null };
    // Records arrive in stream order; a late one (claimed from a dead consumer) is inserted where it belongs.
    let at = items.length;
    while (at > 0 && compareIds(items[at - 1].id, record.id) > 0) at -= 1;
    items.splice(at, 0, item);
    item.node = render(lane, record);
    if (item.node) {
      const next = items.slice(at + 1).find((i) => i.node);
      timeline.insertBefore(item.node, next ? next.node : null);
      if (following && at === items.length - 1) item.node.scrollIntoView({ block: "end" });
    }
    onRecord(record);
    scheduleSummary();
  }

  // -- header, final result and per-tool breakdown --------------------------------------------------------------

  function setFact(key, text) {
    const node = document.getElementById("f-" + key);
    if (node) node.textContent = text;
  }

  function setStatus(status) {
    const badge = document.getElementById("status");
    badge.textContent = status;
    badge.className = "badge " + status;
    root.dataset.status = status;
  }

  function onRecord(record) {
    const d = record.data || {};
    if (record.type === "task:created") {
      document.getElementById("waiting")?.remove();
      if (!root.dataset.created) root.dataset.created = record.ts || "";
      setFact("source", d.source ?? "—");
      setFact("agent", d.assigned_agent ?? d.agent_type ?? "—");
      setFact("user", d.user_id ?? "—");
      setFact("machine", d.machine_id ?? "—");
      setFact("created", when(record.ts));
      if (root.dataset.status === "unknown") setStatus("running");
    } else if (record.type === "task:metrics" && !finalShown) {
      if (d.cost_usd != null) setFact("cost", usd(d.cost_usd));
      if (d.input_tokens != null) setFact("tokens-in", count(d.input_tokens));
      if (d.output_tokens != null) setFact("tokens-out", count(d.output_tokens));
    } else if (record.type === "task:completed" || record.type === "task:failed") {
      showFinal({
        status: record.type === "task:failed" ? "failed" : d.status || "completed",
        cost_usd: num(d.cost_usd), input_tokens: num(d.input_tokens), output_tokens: num(d.output_tokens),
        duration_seconds: num(d.duration_seconds), exit_code: num(d.exit_code),
        result: d.result, error: d.error, finished_at: record.ts,
      });
    }
  }

  function showFinal(f) {
    if (!f || typeof f !== "object") return;
    finalShown = true;
    const status = String(f.status || "completed");
    setStatus(status === "failed" ? "failed" : status);
    setFact("finished", when(f.finished_at));
    let duration = num(f.duration_seconds);
    if (duration === null && root.dataset.created && f.finished_at) {
      // Not reported (task:failed often omits it): the time between created and finished.
      const span = (Date.parse(f.finished_at) - Date.parse(root.dataset.created)) / 1000;
      if (Number.isFinite(span) && span >= 0) duration = span;
    }
    setFact("duration", seconds(duration));
    setFact("cost", usd(f.cost_usd));
    setFact("tokens-in", count(f.input_tokens));
    setFact("tokens-out", count(f.output_tokens));
    setFact("exit-code", f.exit_code ?? "—");
    const section = document.getElementById("final");
    section.hidden = false;
    section.classList.toggle("error", status === "failed");
    const parts = [];
    if (f.error) parts.push(el("pre", { class: "text error" }, asText(f.error)));
    if (f.result != null && f.result !== "") parts.push(el("pre", { class: "text" }, asText(f.result)));
    if (!parts.length) parts.push(el("p", { class: "muted" }, "No result text."));
    document.getElementById("final-body").replaceChildren(...parts);
  }

  // Event counts and the audit seal come from the task's summary (GET /tasks/{id}); optional extras.
  async function refreshSummary() {
    let summary;
    try {
      summary = await getJSON(base);
    } catch (_) {
      return; // no summary (task not indexed yet): the rest of the page does not depend on it
    }
    if (summary.events && summary.events.total != null) {
      const e = summary.events;
      setFact("events", `${e.total} (${e.webhook_flow ?? 0} webhook, ${e.agent_output ?? 0} agent, ${e.user_inputs ?? 0} user)`);
    }
    const seal = summary.integrity;
    const node = document.getElementById("f-integrity");
    if (seal && node) {
      node.textContent = seal.sealed ? "sealed " + String(seal.digest || "").slice(0, 12) + "…" : "not sealed yet";
      node.title = seal.sealed ? `digest ${seal.digest}, sealed at ${seal.sealed_at}` : "";
    }
  }

  let summaryTimer = null;
  function scheduleSummary() {
    if (summaryTimer === null) summaryTimer = setTimeout(summarize, 80);
  }

  // Cost and tokens per tool. Producers send running totals in task:metrics; what a snapshot adds to the one
  // before is split evenly over the tool calls made in between ("(no tool)" when there were none).
  function summarize() {
    summaryTimer = null;
    document.getElementById("count").textContent = `(${items.length} events)`;
    const rows = new Map();
    const row = (name) => {
      if (!rows.has(name)) rows.set(name, { calls: 0, errors: 0, time: 0, cost: 0, tin: 0, tout: 0 });
      return rows.get(name);
    };
    let prev = { cost: 0, tin: 0, tout: 0 };
    let since = [];
    let metered = false;
    for (const { record } of items) {
      const d = record.data || {};
      if (record.type === "task:tool_call") {
        row(String(d.name ?? "?")).calls += 1;
        row(String(d.name ?? "?")).time += toolSeconds.get(record.id) || 0;
        since.push(String(d.name ?? "?"));
      } else if (record.type === "task:tool_result" && truthy(d.is_error)) {
        row(String(d.name ?? "?")).errors += 1;
      } else if (record.type === "task:metrics" || record.type === "task:completed" || record.type === "task:failed") {
        const cur = { cost: num(d.cost_usd), tin: num(d.input_tokens), tout: num(d.output_tokens) };
        if (cur.cost === null && cur.tin === null && cur.tout === null) continue;
        metered = true;
        const next = { cost: cur.cost ?? prev.cost, tin: cur.tin ?? prev.tin, tout: cur.tout ?? prev.tout };
        const added = next.cost > prev.cost || next.tin > prev.tin || next.tout > prev.tout;
        const targets = since.length ? since : added ? ["(no tool)"] : [];
        for (const name of targets) {
          const r = row(name);
          r.cost += Math.max(0, next.cost - prev.cost) / targets.length;
          r.tin += Math.max(0, next.tin - prev.tin) / targets.length;
          r.tout += Math.max(0, next.tout - prev.tout) / targets.length;
        }
        prev = next;
        since = [];
      }
    }
    const box = document.getElementById("tools");
    if (!rows.size) {
      box.replaceChildren(el("p", { class: "muted" }, "No tool calls yet."));
      return;
    }
    const sorted = [...rows.entries()].sort((a, b) => b[1].cost - a[1].cost || b[1].calls - a[1].calls);
    const m = (v, f) => (metered ? f(v) : "—");
    box.replaceChildren(
      el(
        "table",
        { class: "breakdown" },
        el("thead", {}, el("tr", {}, ["Tool", "Calls", "Errors", "Time", "Cost*", "Tokens in*", "Tokens out*"].map((h, i) => el("th", { class: i ? "num" : "" }, h)))),
        el(
          "tbody",
          {},
          sorted.map(([name, r]) =>
            el(
              "tr",
              { class: r.errors ? "has-error" : "" },
              el("td", {}, name),
              el("td", { class: "num" }, r.calls),
              el("td", { class: "num" }, r.errors),
              el("td", { class: "num" }, seconds(r.time)),
              el("td", { class: "num" }, m(r.cost, usd)),
              el("td", { class: "num" }, m(Math.round(r.tin), count)),
              el("td", { class: "num" }, m(Math.round(r.tout), count)),
            ),
          ),
        ),
      ),
      el(
        "p",
        { class: "muted small" },
        metered
          ? "* Estimated: producers report running totals (task:metrics); what each snapshot adds is split evenly over the tool calls made since the one before."
          : "* This task's events carry no cost or token figures yet, so only calls and errors are counted.",
      ),
    );
  }

  // -- live: SSE, with a polling fallback ------------------------------------------------------------------------

  let live = false;
  let source = null;

  function setLive(text, cls) {
    liveState.textContent = text;
    liveState.className = "live-state " + cls;
  }

  function connect() {
    const params = new URLSearchParams();
    if (root.dataset.status === "unknown") params.set("wait", "1");
    // A new connection (not the browser's own reconnect, which sends Last-Event-ID) resumes after what we have.
    if (lastId !== null) params.set("after", lastId);
    const query = params.toString();
    let opened = false;
    source = new EventSource(base + "/events" + (query ? "?" + query : ""));
    source.addEventListener("open", () => {
      opened = true;
      live = true;
      setLive("live", "live");
    });
    source.addEventListener("record", (event) => {
      const message = JSON.parse(event.data);
      add(message.file, message.record);
    });
    source.addEventListener("end", (event) => {
      live = false;
      source.close();
      try {
        showFinal(JSON.parse(event.data));
      } catch (_) {
        /* the final result is also in the task:completed / task:failed record */
      }
      setLive("finished", "done");
      setTimeout(refreshSummary, 1500); // the index and the seal follow the final record shortly
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        live = false;
        // Never opened (no SSE endpoint, or refused): fall back to polling the logs.
        if (!opened) {
          poll();
        } else {
          setLive("reconnecting…", "warn");
          setTimeout(connect, 2000);
        }
      } else {
        // The browser reconnects by itself, sending Last-Event-ID: the stream resumes after the last record.
        setLive("reconnecting…", "warn");
      }
    });
  }

  async function poll() {
    setLive("polling", "warn");
    try {
      const logs = await getJSON(base + "/logs");
      for (const file of ["webhook_flow", "agent_output", "user_inputs"]) {
        for (const record of logs[file] || []) add(file, record);
      }
      if (logs.final_result) {
        showFinal(logs.final_result);
        setLive("finished", "done");
        return;
      }
    } catch (error) {
      if (error.status !== 404) setLive(error.message, "error");
    }
    setTimeout(poll, 2000);
  }

  // A running task's "Duration" counts up until the final result arrives.
  setInterval(() => {
    if (finalShown || root.dataset.status !== "running" || !root.dataset.created) return;
    const started = Date.parse(root.dataset.created);
    if (!Number.isNaN(started)) setFact("duration", "running " + seconds((Date.now() - started) / 1000));
  }, 1000);

  document.getElementById("expand").addEventListener("click", (event) => {
    const open = event.target.textContent === "Expand all";
    for (const d of timeline.querySelectorAll("details")) d.open = open;
    event.target.textContent = open ? "Collapse all" : "Expand all";
  });
  for (const box of document.querySelectorAll("input[data-lane]")) {
    box.addEventListener("change", () => timeline.classList.toggle("hide-" + box.dataset.lane, !box.checked));
  }

  connect();
  refreshSummary();
})();
