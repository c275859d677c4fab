// The comfaas dashboard: renders each snapshot the server sends on
// /events (server-sent events). No framework and no innerHTML with data:
// every value goes in through textContent, so a function or node name
// cannot inject markup.
"use strict";

const COLORS = ["#2e6be6", "#12a150", "#dc8a00", "#9333ea", "#d92d20", "#0891b2", "#be185d", "#4d7c0f"];

// A script error anywhere shows on the page (and fails the browser test).
window.addEventListener("error", (e) => showError("script error: " + e.message));
window.addEventListener("unhandledrejection", (e) => showError("script error: " + e.reason));

function showError(text) {
  const box = document.getElementById("error");
  box.textContent = text;
  box.hidden = false;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fmt(n, digits) {
  if (n === null || n === undefined) return "–";
  return Number(n).toFixed(digits === undefined ? 0 : digits);
}

function ms(n) {
  if (n === null || n === undefined) return "–";
  return n < 10 ? Number(n).toFixed(2) + " ms" : Number(n).toFixed(0) + " ms";
}

function duration(s) {
  if (s < 120) return s + " s";
  if (s < 7200) return Math.floor(s / 60) + " min";
  return Math.floor(s / 3600) + " h";
}

function fillBody(table, rows, columns, empty) {
  const body = document.querySelector("#" + table + " tbody");
  body.replaceChildren(...rows);
  if (rows.length === 0) {
    body.append(el("tr", {}, el("td", { class: "empty", colspan: String(columns) }, empty)));
  }
}

const colorOf = new Map();
function color(node) {
  if (!colorOf.has(node)) colorOf.set(node, COLORS[colorOf.size % COLORS.length]);
  return colorOf.get(node);
}

function renderCards(s) {
  const sum = (key) => s.dispatchers.reduce((a, d) => a + d[key], 0);
  const alive = s.nodes.filter((n) => n.alive).length;
  const ev = s.events;
  const cards = [
    ["Nodes alive", alive + " / " + s.nodes.length, alive < s.nodes.length],
    ["Received", sum("received")],
    ["Succeeded", sum("succeeded")],
    ["Failed", sum("failed"), sum("failed") > 0],
    ["In flight", sum("in_flight")],
    ["Events pending", fmt(ev.pending)],
    ["Events in progress", fmt(ev.in_progress)],
    ["Being retried", fmt(ev.retrying), ev.retrying > 0],
    ["Dead letters", fmt(ev.dead_letters), ev.dead_letters > 0],
  ];
  document.getElementById("cards").replaceChildren(
    ...cards.map(([label, value, bad]) =>
      el("div", { class: bad ? "card bad" : "card", "data-card": label },
        el("div", { class: "label" }, label),
        el("div", { class: "value" }, value)))
  );
  if (ev.error) {
    document.getElementById("cards").append(
      el("div", { class: "card", "data-card": "events-error" },
        el("div", { class: "label" }, "Events stream"),
        el("div", { class: "mono" }, ev.error)));
  }
}

function renderNodes(s) {
  const rows = s.nodes.map((n) => {
    const functions = el("td", {});
    for (const f of n.functions) {
      const serving = f.serving === null || f.serving === undefined ? "–" : f.serving;
      const chip = el("span", { class: "chip " + f.state, "data-function": f.name, title: f.state + (f.reason ? ": " + f.reason : "") },
        f.name, el("span", { class: "ver" }, serving === f.version ? f.version : serving + " → " + f.version));
      functions.append(chip);
    }
    if (n.functions.length === 0) functions.append(el("span", { class: "empty" }, "none"));
    return el("tr", { class: n.alive ? "" : "dead", "data-node": n.node },
      el("td", {}, n.site),
      el("td", { class: "mono" }, n.node),
      el("td", {}, el("span", { class: "tier tier-" + n.tier }, n.tier)),
      el("td", { class: "num" }, n.slots),
      el("td", { class: "num" }, n.running),
      el("td", { class: "num" }, n.queued + " / " + n.queue_capacity),
      el("td", { class: "num", title: "one-minute load average per core" }, fmt(n.cpu_load, 2)),
      el("td", { class: "num" }, ms(n.rtt_ms)),
      el("td", { class: "num" }, n.placed),
      el("td", {}, el("span", { class: n.alive ? "alive" : "not-alive" }, n.alive ? "alive" : "dead (" + duration(Math.round(n.last_seen_ms / 1000)) + ")")),
      functions);
  });
  fillBody("nodes", rows, 11, "no node heard yet");
}

// The parts of an estimate (wait, contention, transfer, round trip, run),
// when the dispatcher sends them (`CandidateEstimate.parts`).
function parts(candidate) {
  const p = candidate.parts;
  if (!p || typeof p !== "object") return "";
  return Object.entries(p)
    .filter(([, v]) => typeof v === "number")
    .map(([k, v]) => k.replace(/_ms$/, "") + " " + fmt(v, 2))
    .join(", ");
}

function renderDecisions(s) {
  const rows = s.decisions.map((d) => {
    const worst = Math.max(...d.candidates.map((c) => c.estimate_ms), 0.001);
    const candidates = el("td", {});
    for (const c of d.candidates) {
      const detail = parts(c);
      candidates.append(el("div", { class: c.node === d.node ? "cand chosen" : "cand", title: detail },
        el("span", { class: "mono" }, c.node),
        el("span", { class: "bar" }),
        ms(c.estimate_ms) + (detail ? " (" + detail + ")" : "")));
      candidates.lastChild.children[1].style.width = Math.max(4, 80 * c.estimate_ms / worst) + "px";
    }
    if (d.candidates.length === 0) candidates.append(el("span", { class: "empty" }, "–"));
    return el("tr", { "data-decision-function": d.function, "data-decision-node": d.node },
      el("td", {}, d.function),
      el("td", { class: "mono" }, d.node),
      el("td", { class: "num" }, d.procs === null || d.procs === undefined ? "–" : d.procs),
      el("td", { class: "num" }, ms(d.estimate_ms)),
      el("td", { class: "num" }, ms(d.took_ms)),
      candidates,
      el("td", {}, d.reason),
      el("td", { class: "mono" }, d.invocation));
  });
  fillBody("decisions", rows, 8, "no decision yet: invoke a function");
}

function renderDispatchers(s) {
  const rows = s.dispatchers.map((d) => el("tr", { "data-dispatcher": d.dispatcher },
    el("td", { class: "mono" }, d.dispatcher),
    el("td", {}, el("span", { class: d.alive ? "alive" : "not-alive" }, d.alive ? "alive" : "silent")),
    el("td", { class: "num" }, duration(d.uptime_s)),
    el("td", { class: "num" }, d.received),
    el("td", { class: "num" }, d.succeeded),
    el("td", { class: "num" }, d.failed),
    el("td", { class: "num" }, d.in_flight),
    el("td", { class: "num" }, d.dead_lettered),
    el("td", {}, d.errors.map((e) => e.code + "×" + e.count).join(", ") || "–")));
  fillBody("dispatchers", rows, 9, "no dispatcher heard yet");
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function renderChart(s) {
  const W = 1000, H = 180, left = 40, right = 10, top = 10, bottom = 22;
  const samples = s.rates;
  const nodes = [...new Set(samples.flatMap((r) => Object.keys(r.per_node)))].sort();
  const max = Math.max(1, ...samples.flatMap((r) => Object.values(r.per_node)));
  const yMax = Math.ceil(max);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": "invocations per second by node" });
  const y = (v) => top + (H - top - bottom) * (1 - v / yMax);
  const t0 = samples.length ? samples[0].t : 0;
  const t1 = samples.length ? samples[samples.length - 1].t : 1;
  const x = (t) => left + (W - left - right) * (t1 === t0 ? 1 : (t - t0) / (t1 - t0));
  for (const v of [0, yMax / 2, yMax]) {
    chart.append(svg("line", { class: "axis", x1: left, x2: W - right, y1: y(v), y2: y(v) }));
    const label = svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" });
    label.textContent = fmt(v, v % 1 ? 1 : 0);
    chart.append(label);
  }
  const span = svg("text", { x: W - right, y: H - 6, "text-anchor": "end" });
  span.textContent = samples.length > 1 ? "last " + Math.round((t1 - t0) / 1000) + " s" : "";
  chart.append(span);
  for (const node of nodes) {
    const points = samples.map((r) => x(r.t).toFixed(1) + "," + y(r.per_node[node] || 0).toFixed(1)).join(" ");
    chart.append(svg("polyline", { points, fill: "none", stroke: color(node), "stroke-width": 2, "vector-effect": "non-scaling-stroke", "data-series": node }));
  }
  const legend = el("div", { class: "legend" });
  for (const node of nodes) {
    const last = samples.length ? samples[samples.length - 1].per_node[node] || 0 : 0;
    const item = el("span", {}, node + " " + fmt(last, 1) + "/s");
    item.style.setProperty("--swatch", color(node));
    legend.append(item);
  }
  document.getElementById("chart").replaceChildren(chart, legend);
}

function render(s) {
  renderCards(s);
  renderChart(s);
  renderNodes(s);
  renderDecisions(s);
  renderDispatchers(s);
  document.getElementById("status-text").textContent =
    "live · updated " + new Date(s.sent_unix_ms).toLocaleTimeString();
  document.body.dataset.state = "live";
}

function receive(text) {
  const s = JSON.parse(text);
  // The server's first value, before its first tick, is `{}`.
  if (!s.nodes) return;
  render(s);
}

function connect() {
  const source = new EventSource("/events");
  source.addEventListener("snapshot", (e) => receive(e.data));
  source.addEventListener("open", () => {
    document.getElementById("status-text").textContent = "live";
  });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself; say so meanwhile.
    document.body.dataset.state = "lost";
    document.getElementById("status-text").textContent = "connection lost, retrying…";
  });
}

// The latest snapshot at once, then the stream.
fetch("/snapshot.json")
  .then((r) => r.text())
  .then(receive)
  .finally(connect);
