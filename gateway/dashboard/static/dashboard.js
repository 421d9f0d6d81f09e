// railgate dashboard: reads /status (JSON) and /metrics (Prometheus text) every REFRESH_MS and redraws.
// Rates and quantiles come from the difference between this scrape and the previous one, as
// Prometheus's rate() and histogram_quantile() would compute them; with no traffic in between, the
// all-time figures are shown instead (marked "all time").
"use strict";

const REFRESH_MS = 1500;
const FETCH_TIMEOUT_MS = 3000;
const KEY_STORE = "railgate.adminKey";
const DECISIONS_SHOWN = 12;

let previous = null; // {at, metrics}
let refreshes = 0;

// -- Prometheus text format ------------------------------------------------------------------------

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

function parseMetrics(text) {
  const samples = new Map(); // name -> [{labels, value, key}]
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = LINE.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(LABEL)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    const value = m[3] === "+Inf" ? Infinity : m[3] === "-Inf" ? -Infinity : Number(m[3]);
    const key = m[1] + "{" + (m[2] || "") + "}";
    if (!samples.has(m[1])) samples.set(m[1], []);
    samples.get(m[1]).push({ labels, value, key });
  }
  return samples;
}

function select(metrics, name, match = {}) {
  return (metrics.get(name) || []).filter((s) => Object.entries(match).every(([k, v]) => s.labels[k] === v));
}

// The increase of each series since the previous scrape (a counter reset counts from zero).
function increase(name, match) {
  const now = select(current.metrics, name, match);
  if (!previous) return now.map((s) => ({ ...s, value: 0 }));
  const before = new Map(select(previous.metrics, name, match).map((s) => [s.key, s.value]));
  return now.map((s) => {
    const was = before.get(s.key) ?? 0;
    return { ...s, value: s.value >= was ? s.value - was : s.value };
  });
}

const total = (samples) => samples.reduce((sum, s) => sum + s.value, 0);

function groupBy(samples, label) {
  const out = new Map();
  for (const s of samples) out.set(s.labels[label], (out.get(s.labels[label]) || 0) + s.value);
  return out;
}

// histogram_quantile over buckets summed across the other labels: linear inside the bucket.
function quantile(q, buckets) {
  const byLe = new Map();
  for (const b of buckets) {
    const le = b.labels.le === "+Inf" ? Infinity : Number(b.labels.le);
    byLe.set(le, (byLe.get(le) || 0) + b.value);
  }
  const les = [...byLe.keys()].sort((a, b) => a - b);
  const count = les.length ? byLe.get(les[les.length - 1]) : 0;
  if (!count) return null;
  const rank = q * count;
  let lower = 0;
  let below = 0;
  for (const le of les) {
    const c = byLe.get(le);
    if (c >= rank) {
      if (le === Infinity) return lower;
      return lower + (le - lower) * ((rank - below) / Math.max(c - below, 1e-12));
    }
    lower = le;
    below = c;
  }
  return lower;
}

// Quantiles over the last refresh when there was traffic in it, else over all time.
function windowed(name, match) {
  const recent = increase(name + "_bucket", match);
  if (total(recent.filter((b) => b.labels.le === "+Inf")) > 0) return { buckets: recent, allTime: false };
  return { buckets: select(current.metrics, name + "_bucket", match), allTime: true };
}

// -- the page --------------------------------------------------------------------------------------

let current = null; // {at, metrics}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "width") node.style.width = v; // through the CSSOM: the page's CSP allows no inline style
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const ms = (s) => (s == null ? "–" : s * 1000 < 10 ? (s * 1000).toFixed(2) + " ms" : (s * 1000).toFixed(1) + " ms");
const msv = (v) => (v == null ? "–" : v < 10 ? v.toFixed(2) + " ms" : v.toFixed(1) + " ms");
const pct = (x) => (x * 100).toFixed(x < 0.1 ? 1 : 0) + "%";
const pill = (text, kind) => el("span", { class: "pill " + kind }, text);
const cell = (field, ...content) => el("td", { "data-field": field }, ...content);
const num = (field, ...content) => el("td", { class: "num", "data-field": field }, ...content);

function replaceRows(id, rows, empty) {
  const body = document.querySelector("#" + id + " tbody");
  const cols = document.querySelectorAll("#" + id + " thead th").length;
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colSpan: cols, class: "muted" }, empty))]));
}

function hubRow(hub) {
  const models = Object.entries(hub.models || {});
  const predicted = models.length
    ? el("div", { class: "small" }, ...models.map(([m, v]) => el("div", {}, m + ": " + msv(v.latency_ms))))
    : "–";
  const obs = windowed("railgate_backend_latency_seconds", { backend: hub.name });
  const p50 = quantile(0.5, obs.buckets);
  const p99 = quantile(0.99, obs.buckets);
  const observed = p50 == null ? "–" : ms(p50) + " / " + ms(p99) + (obs.allTime ? " (all time)" : "");
  const prices = [...new Set(models.map(([, v]) => v.price_per_1k_now))];
  const now = prices.length ? prices : [hub.price_per_1k];
  const tariff = now.some((p) => p !== hub.price_per_1k) ? "tariff, base " + hub.price_per_1k : "base";
  const breakerKind = { closed: "ok", half_open: "warn", open: "bad" }[hub.breaker] || "warn";
  const cls = !hub.healthy || hub.breaker === "open" ? "down" : hub.draining ? "draining" : "";
  return el(
    "tr",
    { class: cls, "data-hub": hub.name },
    cell("name", el("strong", {}, hub.name), " ", el("span", { class: "muted small" }, hub.kind)),
    cell("region", hub.region),
    cell("health", hub.healthy ? pill("ready", "ok") : pill("down", "bad")),
    cell("breaker", pill(hub.breaker, breakerKind)),
    cell("draining", hub.draining ? pill("draining", "warn") : el("span", { class: "muted" }, "no")),
    cell("predicted", predicted),
    num("observed", observed),
    num("price", now.join(" / "), " ", el("span", { class: "muted small" }, "(" + tariff + ")")),
    num("carbon", hub.carbon_g_per_kwh),
    num("share", pct(hub.traffic_share || 0)),
    num("inflight", hub.inflight + " / " + hub.capacity),
    num("ejections", hub.ejections),
  );
}

function modelRows(status, dt) {
  const names = new Set(select(current.metrics, "railgate_requests_total").map((s) => s.labels.model));
  for (const hub of status.hubs) for (const m of Object.keys(hub.models || {})) names.add(m);
  return [...names].filter((m) => m).sort().map((model) => {
    const rate = dt > 0 ? total(increase("railgate_requests_total", { model })) / dt : 0;
    const lat = windowed("railgate_request_latency_seconds", { model });
    const p50 = quantile(0.5, lat.buckets);
    const p99 = quantile(0.99, lat.buckets);
    const allTime = p50 != null && lat.allTime ? el("span", { class: "muted small" }, " all time") : "";
    let rows = total(increase("railgate_batch_size_sum", { model }));
    let batches = total(increase("railgate_batch_size_count", { model }));
    if (!batches) {
      rows = total(select(current.metrics, "railgate_batch_size_sum", { model }));
      batches = total(select(current.metrics, "railgate_batch_size_count", { model }));
    }
    const byStatus = groupBy(select(current.metrics, "railgate_requests_total", { model }), "status");
    const misses = byStatus.get("504") || 0;
    const missRate = dt > 0 ? total(increase("railgate_requests_total", { model, status: "504" })) / dt : 0;
    let errors = 0;
    for (const [code, n] of byStatus) if (code !== "200" && code !== "504") errors += n;
    return el(
      "tr",
      { "data-model": model },
      cell("model", el("strong", {}, model)),
      num("rate", rate.toFixed(1)),
      num("p50", ms(p50), allTime),
      num("p99", ms(p99)),
      num("batch", batches ? (rows / batches).toFixed(1) : "–"),
      num("misses", el("span", { class: misses ? "bad" : "" }, misses), missRate ? " (" + missRate.toFixed(1) + "/s)" : ""),
      num("errors", el("span", { class: errors ? "warn" : "" }, errors)),
    );
  });
}

function drawMix(status) {
  const kinds = new Map(status.hubs.map((h) => [h.name, h.kind]));
  let served = groupBy(increase("railgate_requests_total", { status: "200" }), "backend");
  let label = "last refresh";
  if (![...served.values()].some((n) => n > 0)) {
    served = groupBy(select(current.metrics, "railgate_requests_total", { status: "200" }), "backend");
    label = "all time";
  }
  const sum = [...served.values()].reduce((a, b) => a + b, 0);
  const mix = document.getElementById("mix");
  if (!sum) {
    mix.replaceChildren(el("div", { class: "muted" }, "no requests answered yet"));
    return;
  }
  let hubs = 0;
  let local = 0;
  const rows = [...served.entries()].sort((a, b) => b[1] - a[1]).map(([backend, n]) => {
    const isLocal = kinds.get(backend) === "local";
    if (isLocal) local += n;
    else hubs += n;
    return el(
      "div",
      { class: "mixrow", "data-backend": backend },
      el("span", {}, backend),
      el("div", { class: "mixbar" + (isLocal ? " local" : ""), width: ((100 * n) / sum).toFixed(1) + "%" }),
      el("span", { class: "num" }, pct(n / sum)),
    );
  });
  mix.replaceChildren(
    el("div", { "data-field": "split" }, el("strong", {}, "hubs " + pct(hubs / sum) + " · local " + pct(local / sum)),
      el("span", { class: "muted small" }, " (" + label + ")")),
    ...rows,
  );
}

function draw(status, dt) {
  document.getElementById("policy").textContent = "policy: " + status.default_policy;
  replaceRows("hubs", status.hubs.map(hubRow), "no backends configured");
  replaceRows("models", modelRows(status, dt), "no models");
  drawMix(status);
  const decisions = [...(status.recent_decisions || [])].reverse().slice(0, DECISIONS_SHOWN).map((d) =>
    el("tr", {}, cell("model", d.model), cell("backend", d.backend), cell("policy", d.policy), cell("reason", d.reason), num("rows", d.rows)),
  );
  replaceRows("decisions", decisions, "no batch routed yet");
}

// -- fetching --------------------------------------------------------------------------------------

class NeedsKey extends Error {}

async function read(path) {
  const headers = {};
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.Authorization = "Bearer " + key;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
  try {
    const reply = await fetch(path, { headers, signal: abort.signal, cache: "no-store" });
    if (reply.status === 401 || reply.status === 403) throw new NeedsKey(path + " answered " + reply.status);
    if (!reply.ok) throw new Error(path + " answered " + reply.status);
    return path === "/status" ? await reply.json() : await reply.text();
  } finally {
    clearTimeout(timer);
  }
}

function showState(text, kind) {
  const state = document.getElementById("state");
  state.textContent = text;
  state.className = "pill " + kind;
}

async function refresh() {
  try {
    const [status, text] = await Promise.all([read("/status"), read("/metrics")]);
    current = { at: performance.now(), metrics: parseMetrics(text) };
    const dt = previous ? (current.at - previous.at) / 1000 : 0;
    draw(status, dt);
    previous = current;
    refreshes += 1;
    document.body.dataset.refreshes = String(refreshes);
    document.getElementById("keyform").hidden = true;
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    showState("live", "ok");
  } catch (err) {
    if (err instanceof NeedsKey) {
      document.getElementById("keyform").hidden = false;
      document.getElementById("keyerror").textContent = sessionStorage.getItem(KEY_STORE) ? "that key was refused" : "";
      showState("needs key", "warn");
    } else {
      showState("stale: " + (err.name === "AbortError" ? "no answer in " + FETCH_TIMEOUT_MS / 1000 + " s" : err.message), "bad");
    }
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

document.getElementById("keyform").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, document.getElementById("key").value.trim());
  previous = null;
});

refresh();
