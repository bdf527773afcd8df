"""The live status page: plain HTML and JavaScript, no build step, served by Nissa.

It polls `/api/status` every second and redraws: health and system mode, active
alerts, bus lag per stream and group, sources, the latest rejections (refused
entries, commands and policy updates), Simic's learner (its latest PPO figures,
candidates by outcome, replay fill and experience counts), and per run the breaker and
conservative state, the risk score, recent decisions with their reasons and each
seed's lifecycle stage grouped by layer. Telemetry text is inserted as text nodes,
never as HTML. Kept in a Python module so it ships inside the package.
"""

from __future__ import annotations

STATUS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tamiyo-bus status</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f5f6f8;
         color: #1d2330; }
  header { background: #1d2330; color: #fff; padding: 10px 18px; display: flex;
           gap: 18px; align-items: baseline; flex-wrap: wrap; }
  header h1 { font-size: 18px; margin: 0; }
  main { padding: 12px 18px; display: grid; gap: 14px;
         grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); }
  section { background: #fff; border: 1px solid #dde1e8; border-radius: 6px;
            padding: 10px 14px; }
  section.wide { grid-column: 1 / -1; }
  h2 { font-size: 15px; margin: 0 0 8px; }
  h3 { font-size: 14px; margin: 10px 0 4px; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid #eef0f4;
           vertical-align: top; }
  th { font-weight: 600; color: #4a5264; }
  .badge { display: inline-block; padding: 1px 7px; border-radius: 9px;
           font-size: 12px; font-weight: 600; }
  .ok, .operational, .closed { background: #d9f2e0; color: #17612f; }
  .unhealthy, .critical, .open { background: #fbd9d9; color: #8c1c1c; }
  .degraded, .warning, .half_open, .pending { background: #fdeccc; color: #7a4b00; }
  .info { background: #dde8fb; color: #1f3f7a; }
  .muted { color: #7a8294; }
  .seed { display: inline-block; margin: 2px 6px 2px 0; padding: 2px 8px;
          border-radius: 4px; background: #eef0f4; font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1>tamiyo-bus</h1>
  <span>health <span id="health" class="badge">loading</span></span>
  <span>system <span id="mode" class="badge">unknown</span></span>
  <span id="updated" class="muted"></span>
</header>
<main>
  <section class="wide"><h2>Active alerts</h2><div id="alerts"></div></section>
  <section><h2>Bus lag</h2><div id="lag"></div></section>
  <section><h2>Sources</h2><div id="sources"></div></section>
  <section class="wide"><h2>Rejections</h2><div id="rejections"></div></section>
  <section class="wide"><h2>Learning (Simic)</h2><div id="learning"></div></section>
  <section class="wide"><h2>Runs</h2><div id="runs"></div></section>
</main>
<script>
"use strict";
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
function table(headers, rows) {
  if (!rows.length) return el("div", "muted", "none");
  const t = el("table");
  const head = el("tr");
  headers.forEach(h => head.appendChild(el("th", "", h)));
  t.appendChild(head);
  rows.forEach(cells => {
    const tr = el("tr");
    cells.forEach(c => {
      const td = el("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = String(c);
      tr.appendChild(td);
    });
    t.appendChild(tr);
  });
  return t;
}
function badge(text, cls) { return el("span", "badge " + (cls || text), text); }
function clock(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "";
}
function labels(map) {
  return Object.entries(map || {}).map(([k, v]) => k + "=" + v).join(" ");
}
function replace(id, node) {
  const target = document.getElementById(id);
  target.replaceChildren(node);
}
const LEARNING_FIGURES = [
  ["policy_version", "policy version"], ["updates", "updates"],
  ["policy_loss", "policy loss"], ["value_loss", "value loss"],
  ["entropy", "entropy"], ["approx_kl", "approx KL"],
  ["clip_fraction", "clip fraction"], ["explained_variance", "explained variance"],
  ["learning_rate", "learning rate"], ["grad_norm", "grad norm"],
  ["replay_fill", "replay fill", percent]];
function figure(value) {
  if (value === null || value === undefined) return "n/a";
  if (Number.isInteger(value)) return String(value);
  return Math.abs(value) < 0.01 ? value.toExponential(2) : value.toPrecision(4);
}
function percent(value) {
  return value === null || value === undefined ? "n/a" : (100 * value).toFixed(1) + " %";
}
function renderLearning(learning) {
  if (!learning) return el("div", "muted", "no learner seen");
  const box = el("div");
  const figures = learning.figures || {};
  box.appendChild(table(LEARNING_FIGURES.map(([, label]) => label),
    [LEARNING_FIGURES.map(([key, , format]) => (format || figure)(figures[key]))]));
  const candidates = learning.candidates || {};
  box.appendChild(el("h3", "", "candidates"));
  box.appendChild(table(["published", "rejected", "deferred", "rejected in a row"],
    [[figure(candidates.published), figure(candidates.rejected),
      figure(candidates.deferred), figure(figures.candidates_rejected_in_row)]]));
  box.appendChild(el("h3", "", "experience"));
  box.appendChild(table(["state", "count"],
    Object.entries(learning.experience || {}).map(([state, n]) => [state, figure(n)])));
  return box;
}
function renderRun(run) {
  const box = el("div");
  box.appendChild(el("h3", "", "run " + (run.run || "(none)")));
  const facts = el("div");
  const cons = run.conservative || {};
  facts.appendChild(el("span", "", "conservative mode: "));
  facts.appendChild(badge(cons.active ? "on" : "off", cons.active ? "warning" : "ok"));
  facts.appendChild(el("span", "muted", cons.cause ? " cause: " + cons.cause : ""));
  facts.appendChild(el("span", "", "   expected risk: " +
    (run.risk === null || run.risk === undefined ? "n/a" : run.risk.toFixed(3))));
  box.appendChild(facts);
  const breakers = Object.entries(run.breakers || {}).map(([name, b]) =>
    [name, badge(b.state), b.previous || "", clock(b.time_s)]);
  box.appendChild(el("h3", "", "breakers"));
  box.appendChild(table(["breaker", "state", "was", "since"], breakers));
  box.appendChild(el("h3", "", "recent decisions"));
  box.appendChild(table(["time", "step", "command", "action", "reason"],
    (run.decisions || []).map(d =>
      [clock(d.time_s), d.step, d.command_type, d.action, d.reason])));
  box.appendChild(el("h3", "", "seeds by layer"));
  const layers = Object.entries(run.layers || {}).map(([layer, seeds]) => {
    const cell = el("div");
    seeds.forEach(s => cell.appendChild(el("span", "seed", s.seed + " " + s.stage +
      (s.alpha === null || s.alpha === undefined ? "" : " \\u03b1=" + s.alpha))));
    return [layer, cell];
  });
  box.appendChild(table(["layer", "seeds"], layers));
  return box;
}
function render(status) {
  const health = status.health || {};
  const h = document.getElementById("health");
  h.textContent = health.status || "unknown";
  h.className = "badge " + (health.status || "");
  const wl = (health.components || {}).weatherlight;
  const m = document.getElementById("mode");
  m.textContent = wl ? wl.system_mode : "n/a";
  m.className = "badge " + (wl ? wl.system_mode : "");
  document.getElementById("updated").textContent =
    "updated " + clock(status.time_s) +
    ((health.problems || []).length ? " \\u2014 " + health.problems.join("; ") : "");
  replace("alerts", table(["severity", "alert", "labels", "since", "summary", "count"],
    (status.alerts || []).map(a => [badge(a.severity), a.name, labels(a.labels),
      clock(a.firing_s || a.started_s), a.summary, a.occurrences])));
  const lag = [];
  const streams = (health.bus_lag || {}).streams || {};
  Object.entries(streams).forEach(([stream, groups]) =>
    Object.entries(groups).forEach(([group, n]) => lag.push([stream, group, n])));
  replace("lag", table(["stream", "group", "entries behind"], lag));
  replace("sources", table(["source", "last seen", "health"],
    Object.entries(health.sources || {}).map(([name, s]) =>
      [name, s.last_seen_age_s.toFixed(1) + " s ago", s.health || "n/a"])));
  const rejected = status.rejections || {};
  replace("rejections", table(["time", "source", "kind", "reason", "stream", "detail"],
    (rejected.latest || []).slice(0, 10).map(r =>
      [clock(r.time_s), r.source, r.kind, r.reason, r.stream, r.detail])));
  replace("learning", renderLearning(status.learning));
  const runs = el("div");
  (status.runs || []).forEach(r => runs.appendChild(renderRun(r)));
  if (!(status.runs || []).length) runs.appendChild(el("div", "muted", "no run yet"));
  replace("runs", runs);
}
async function poll() {
  try {
    const reply = await fetch("/api/status", {cache: "no-store"});
    render(await reply.json());
  } catch (err) {
    const h = document.getElementById("health");
    h.textContent = "unreachable";
    h.className = "badge unhealthy";
  }
  setTimeout(poll, 1000);
}
poll();
</script>
</body>
</html>
"""
