// meshgate dashboard: polls /api/mesh (the CA's mesh JSON) and redraws. Every value from the
// JSON is inserted as text (textContent), never as markup: paths and principals in it come
// from requests and may hold anything.
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
let selectedEdge = null; // "source→destination"
let last = null;
let asked = 0; // polls sent; an answer older than the last one drawn is dropped
let drawn = 0;

function el(tag, attrs, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(key, String(value));
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function num(value, digits) {
  if (value === null || value === undefined) return "–";
  return Number(value).toFixed(digits);
}
function pct(rate) { return rate === null || rate === undefined ? "–" : (rate * 100).toFixed(2) + " %"; }
function colour(edge) {
  if (!edge.requests) return "var(--idle)";
  if (edge.success_rate >= 0.995) return "var(--ok)";
  if (edge.success_rate >= 0.95) return "var(--warn)";
  return "var(--bad)";
}
function edgeKey(edge) { return edge.source + "→" + edge.destination; }
function cell(text, cls) { return el("td", cls ? { class: cls } : {}, text); }
function fill(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows);
}
function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (Math.abs(s) < 120) return s + " s";
  if (Math.abs(s) < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

// The edges to draw: those with traffic in the window, plus the calls each sidecar is
// configured to make (its outbound services), drawn idle, so the graph keeps its shape.
function graphEdges(mesh) {
  const edges = [...mesh.edges];
  const seen = new Set(edges.map(edgeKey));
  for (const i of mesh.instances) {
    for (const destination of i.outbound_services || []) {
      const idle = { source: i.service, destination, requests: 0, rps: 0, success_rate: null, latency_ms: {}, idle: true };
      if (!seen.has(edgeKey(idle))) { seen.add(edgeKey(idle)); edges.push(idle); }
    }
  }
  return edges;
}

// Layered layout: a service's column is the length of the longest call chain into it.
function layout(mesh, edges) {
  const names = new Set(mesh.services.map((s) => s.name));
  for (const e of edges) { names.add(e.source); names.add(e.destination); }
  const depth = new Map([...names].map((n) => [n, 0]));
  for (let round = 0; round < names.size; round++) {
    for (const e of edges) {
      if (e.source !== e.destination && depth.get(e.destination) < depth.get(e.source) + 1) {
        depth.set(e.destination, Math.min(depth.get(e.source) + 1, names.size));
      }
    }
  }
  const columns = new Map();
  for (const name of [...names].sort()) {
    const d = depth.get(name);
    if (!columns.has(d)) columns.set(d, []);
    columns.get(d).push(name);
  }
  const pos = new Map();
  const rows = Math.max(1, ...[...columns.values()].map((c) => c.length));
  for (const [d, members] of columns) {
    members.forEach((name, i) => pos.set(name, { x: 90 + d * 320, y: 60 + (i + (rows - members.length) / 2) * 110 }));
  }
  const width = 180 + Math.max(0, ...depth.values()) * 320;
  return { pos, width, height: 120 + (rows - 1) * 110 };
}

function drawGraph(mesh) {
  const svg = document.getElementById("graph");
  const edges = graphEdges(mesh);
  const { pos, width, height } = layout(mesh, edges);
  const w = Math.max(width, 400), h = height + 80;
  svg.setAttribute("viewBox", `0 -40 ${w} ${h}`);
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  const defs = el("svg:defs", {}, el("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, el("svg:path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "context-stroke" })));
  const parts = [defs];
  const health = new Map(mesh.services.map((s) => [s.name, s.health]));
  for (const e of edges) {
    const a = pos.get(e.source), b = pos.get(e.destination);
    if (!a || !b || a === b) continue;
    const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
    const ux = dx / len, uy = dy / len;
    const x1 = a.x + ux * 72, y1 = a.y + uy * 26, x2 = b.x - ux * 74, y2 = b.y - uy * 28;
    // An edge that skips a column bends around the services between its ends.
    const skips = Math.abs(dx) > 360 || Math.abs(dx) < 1;
    const bend = skips ? Math.max(90, len * 0.22) : 0;
    const cx = (x1 + x2) / 2 + uy * bend, cy = (y1 + y2) / 2 - ux * bend;
    const mx = (x1 + 2 * cx + x2) / 4, my = (y1 + 2 * cy + y2) / 4; // the curve's middle
    const label = e.idle ? "no requests" : `${num(e.rps, 1)} req/s · p99 ${num(e.latency_ms.p99, 1)} ms`;
    const g = el("svg:g", { class: "edge" + (e.idle ? " idle" : "") + (edgeKey(e) === selectedEdge ? " selected" : ""), "data-source": e.source, "data-destination": e.destination, "data-requests": e.requests, "data-p99": e.latency_ms.p99 ?? "", "data-success-rate": e.success_rate ?? "" },
      el("svg:title", {}, `${e.source} → ${e.destination}: ${label}, success ${pct(e.success_rate)}`),
      el("svg:path", { d: `M ${x1} ${y1} Q ${cx} ${cy} ${x2} ${y2}`, stroke: colour(e), fill: "none", "marker-end": "url(#arrow)" }),
      el("svg:text", { x: mx + uy * 14, y: my - ux * 14 - 4, class: "edge-label" }, label));
    g.addEventListener("click", () => select(edgeKey(e)));
    parts.push(g);
  }
  for (const [name, p] of pos) {
    parts.push(el("svg:g", { class: "node " + (health.get(name) || "unknown"), "data-service": name, transform: `translate(${p.x - 70},${p.y - 24})` },
      el("svg:title", {}, `${name}: ${health.get(name) || "seen only as a peer"}`),
      el("svg:rect", { width: 140, height: 48 }),
      el("svg:text", { x: 70, y: 24 }, name)));
  }
  svg.replaceChildren(...parts);
}

function drawServices(mesh) {
  fill("services", mesh.services.map((s) => {
    const ready = s.instances.filter((i) => i.ready && !i.stale).length;
    const st = s.inbound;
    return el("tr", { "data-service": s.name },
      cell(s.name), cell(s.health, "health-" + s.health), cell(`${ready}/${s.instances.length}`, "num"),
      cell(num(st.rps, 2), "num"), cell(pct(st.success_rate), "num"), cell(num(st.latency_ms.p50, 2), "num"),
      cell(num(st.latency_ms.p95, 2), "num"), cell(num(st.latency_ms.p99, 2), "num"), cell(st.denials, "num"),
      cell(st.mtls_failures, "num"));
  }));
}

function drawEdges(mesh) {
  fill("edges", mesh.edges.map((e) => {
    const row = el("tr", { "data-source": e.source, "data-destination": e.destination, class: edgeKey(e) === selectedEdge ? "selected" : "" },
      cell(e.source), cell(e.destination), cell(num(e.rps, 2), "num"), cell(pct(e.success_rate), "num"),
      cell(num(e.latency_ms.p50, 2), "num"), cell(num(e.latency_ms.p99, 2), "num"), cell(e.requests, "num"),
      cell(e.denials, "num"), cell(e.mtls_failures, "num"), cell(e.measured_by));
    row.addEventListener("click", () => select(edgeKey(e)));
    return row;
  }));
  const detail = document.getElementById("edge-detail");
  const edge = mesh.edges.find((e) => edgeKey(e) === selectedEdge);
  detail.hidden = !edge;
  if (!edge) return;
  document.getElementById("edge-detail-title").textContent = `${edge.source} → ${edge.destination}`;
  const facts = [["requests", edge.requests], ["req/s", num(edge.rps, 3)], ["success", pct(edge.success_rate)],
    ["latency p50 / p95 / p99", `${num(edge.latency_ms.p50, 2)} / ${num(edge.latency_ms.p95, 2)} / ${num(edge.latency_ms.p99, 2)} ms`],
    ["bytes received / sent", `${edge.bytes_received} / ${edge.bytes_sent}`], ["measured by", edge.measured_by],
    ["mTLS failures", Object.entries(edge.mtls_failures_by_reason).map(([r, n]) => `${r}: ${n}`).join(", ") || "none"]];
  document.getElementById("edge-detail-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  fill("edge-outcomes", edge.by_outcome.map((o) => el("tr", {}, cell(o.status_class), cell(o.decision), cell(o.protocol), cell(o.count, "num"))));
  fill("edge-denied-by", edge.denied_by.map((d) => el("tr", {}, cell(d.decision), cell(d.policy), cell(d.count, "num"))));
}

function drawDenials(mesh) {
  fill("denials", mesh.denials.map((d) => el("tr", {},
    cell(d.time.replace("T", " ").slice(0, 19)), cell(d.principal), cell(d.action), cell(d.resource), cell(d.path ?? "–"),
    cell(d.decision), el("td", { class: "policies" }, d.policies.join(", ") || "default deny"),
    el("td", { class: "explain" }, el("code", {}, d.explain)))));
}

function drawWorkloads(mesh) {
  fill("workloads", mesh.instances.map((i) => el("tr", { "data-spiffe-id": i.spiffe_id },
    cell(i.spiffe_id), cell(i.service), cell(i.stale ? "stale" : i.ready ? "yes" : "no (" + (i.ready_code || "?") + ")"),
    cell(duration(i.svid_expires_in_seconds), "num"), cell(i.policy_version ?? "–"), cell(i.policy_source ?? "–"),
    cell(i.version), cell(num(i.clock_skew_seconds, 3), "num"), cell(duration(i.last_report_age_seconds) + " ago", "num"))));
}

function draw(mesh) {
  last = mesh;
  document.body.dataset.window = mesh.window;
  document.getElementById("trust-domain").textContent = mesh.ca && mesh.ca.trust_domain ? mesh.ca.trust_domain : "";
  drawGraph(mesh);
  drawServices(mesh);
  drawEdges(mesh);
  drawDenials(mesh);
  drawWorkloads(mesh);
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString() + ` (window ${mesh.window})`;
}

function select(key) {
  selectedEdge = selectedEdge === key ? null : key;
  if (last) draw(last);
}

async function poll() {
  const problem = document.getElementById("problem");
  const window_ = document.getElementById("window").value;
  const ticket = ++asked;
  try {
    const response = await fetch("api/mesh?window=" + encodeURIComponent(window_), { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error(body.detail || response.statusText);
    // Answers can arrive out of order (a slow one for the window shown before a change).
    if (ticket < drawn || window_ !== document.getElementById("window").value) return;
    drawn = ticket;
    draw(body);
    problem.hidden = true;
  } catch (error) {
    // Keep showing the last good view, marked as stale.
    problem.textContent = "not updating: " + error.message;
    problem.hidden = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("window").addEventListener("change", poll);
  poll();
  setInterval(poll, POLL_MS);
});
