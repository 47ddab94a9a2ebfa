// Shared helpers of the page. Task data is untrusted: it only ever reaches the DOM as text nodes.
"use strict";

const TL = (() => {
  // el("div", {class: "x"}, "text", childNode): strings become text nodes, never HTML.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function num(value) {
    if (typeof value === "number") return Number.isFinite(value) ? value : null;
    if (typeof value === "string" && value.trim() !== "" && Number.isFinite(Number(value))) return Number(value);
    return null;
  }

  function usd(value) {
    const n = num(value);
    return n === null ? "—" : "$" + n.toFixed(n >= 100 ? 2 : 4);
  }

  function count(value) {
    const n = num(value);
    if (n === null) return "—";
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return n.toLocaleString("en-US");
  }

  function seconds(value) {
    const n = num(value);
    if (n === null) return "—";
    if (n < 60) return n.toFixed(1) + "s";
    const m = Math.floor(n / 60);
    if (m < 60) return m + "m " + String(Math.floor(n % 60)).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h " + String(m % 60).padStart(2, "0") + "m";
  }

  // ISO-8601 -> "2026-01-31 12:00:03" (UTC), or the text as given when it does not parse.
  function when(value) {
    if (!value) return "—";
    const t = Date.parse(value);
    if (Number.isNaN(t)) return String(value);
    return new Date(t).toISOString().replace("T", " ").slice(0, 19);
  }

  // Stream entry ids "ms-seq" compared as numbers (they outgrow 2^53 in neither part in practice, but be exact).
  function idKey(id) {
    const [ms, seq] = String(id).split("-");
    try {
      return [BigInt(ms || "0"), BigInt(seq || "0")];
    } catch (_) {
      return [0n, 0n];
    }
  }
  function compareIds(a, b) {
    const [am, as] = idKey(a);
    const [bm, bs] = idKey(b);
    if (am !== bm) return am < bm ? -1 : 1;
    if (as !== bs) return as < bs ? -1 : 1;
    return 0;
  }

  // fetch JSON from the API; a 401 sends the browser to the login form.
  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.status === 401) {
      location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
      throw new Error("not signed in");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : "";
      const error = new Error(`${url.split("?")[0]} answered ${response.status}${detail ? ": " + detail : ""}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function taskHref(taskId) {
    return "/t/" + encodeURIComponent(taskId);
  }

  return { el, num, usd, count, seconds, when, compareIds, getJSON, taskHref };
})();
