// Loopline's operator page. Every value from the server is put in the page as text
// (textContent), never as HTML: nothing an operator or a client typed can run here.
"use strict";

const MODEL = document.body.dataset.model;
const API = `/api/models/${encodeURIComponent(MODEL)}`;
const ACTIONS = document.body.dataset.actions === "on";
const state = { champion: null, lastId: 0, charts: {}, picture: null, key: null, dirty: false };

// ------------------------------------------------------------------ helpers

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(target, ...nodes) {
  target.replaceChildren(...nodes.flat());
}

function setState(target, value) {
  target.dataset.state = value;
}

function missing(target, text) {
  show(target, el("p", { class: "missing" }, text));
  setState(target, "missing");
}

async function api(path, options = {}) {
  const response = await fetch(`${API}${path}`, options);
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = { detail: `${response.status} ${response.statusText}` };
  }
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

function number(value, precision = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (typeof value !== "number") return String(value);
  return Math.abs(value) >= 1000 ? value.toFixed(0) : Number(value.toPrecision(precision)).toString();
}

function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toISOString().replace("T", " ").slice(0, 19) + "Z";
}

function short(text, size = 12) {
  if (!text) return "–";
  return String(text).length > size ? String(text).slice(0, size) : String(text);
}

function width(node) {
  return Math.max(320, node.clientWidth || node.parentElement.clientWidth - 10);
}

function chart(id, options, data) {
  const target = document.getElementById(id);
  if (state.charts[id]) state.charts[id].destroy();
  target.replaceChildren();
  state.charts[id] = new uPlot({ width: width(target), height: 220, ...options }, data, target);
  return state.charts[id];
}

const PALETTE = ["#2f5bd3", "#157f3b", "#b54708", "#b42318", "#7a5af8", "#0e9384", "#667085"];

// ------------------------------------------------------------------ now

function card(title, facts) {
  const list = el("dl", { class: "card" });
  for (const [name, value] of facts) {
    if (value === undefined) continue;
    list.append(el("dt", {}, name), el("dd", {}, value));
  }
  return el("div", { class: "card-box" }, el("h4", {}, title), list);
}

function metricsText(metrics) {
  const names = Object.keys(metrics || {}).sort();
  const preferred = names.filter((n) => n.startsWith("test_")).slice(0, 4);
  return (preferred.length ? preferred : names.slice(0, 4))
    .map((n) => `${n} ${number(metrics[n])}`)
    .join(" · ") || "–";
}

function versionFacts(version) {
  return [
    ["data version", short(version.data_version, 16)],
    ["commit", short(version.git_commit, 10) + (version.git_dirty ? " (dirty)" : "")],
    ["metrics", metricsText(version.metrics)],
    ["gate", version.verdict || "–"],
    ["created", when(version.created)],
  ];
}

async function loadNow() {
  const panel = document.querySelector("#now .body");
  const services = document.querySelector("#now .services");
  let data;
  try {
    data = await api("/now");
  } catch (error) {
    missing(panel, `could not read: ${error.message}`);
    return;
  }
  const cards = [];
  if (data.missing && !data.champion) {
    cards.push(el("p", { class: "missing" }, data.missing));
  }
  if (data.champion) {
    const c = data.champion;
    const move = c.move || {};
    state.champion = c.version;
    cards.push(
      card(`Champion v${c.version}`, [
        ["since", when(c.since)],
        ["moved by", move.who ? `${move.who}${move.via ? ` (${move.via})` : ""}` : "–"],
        ["why", move.why || "–"],
        ...versionFacts(c),
      ]),
    );
  } else {
    state.champion = null;
  }
  if (data.deployment) {
    const d = data.deployment;
    cards.push(
      card(`${d.mode === "canary" ? `Canary (${d.share}% of keys)` : "Shadow"} v${d.version}`, [
        ["since", when(d.since)],
        ["by", d.by],
        ["why", d.why || "–"],
        ["against", `champion v${d.champion}`],
      ]),
    );
  }
  if (data.challenger) {
    cards.push(card(`Challenger v${data.challenger.version}`, versionFacts(data.challenger)));
  }
  show(panel, el("div", { class: "cards", id: "now-cards" }, cards));
  setState(panel, data.champion ? "ready" : "missing");
  fillVersions(data.versions || []);
  showServices(services, data);
}

function showServices(target, data) {
  if (data.services_missing) {
    missing(target, data.services_missing);
    return;
  }
  const rows = data.services.map((s) => {
    const t = s.traffic || {};
    const status = !s.answering
      ? el("span", { class: "bad" }, `not answering: ${s.error}`)
      : s.ready
        ? el("span", { class: "good" }, s.fallback ? `ready (fallback): ${s.readiness}` : "ready")
        : el("span", { class: "bad" }, s.readiness || "not ready");
    return el(
      "tr",
      { "data-url": s.url },
      el("td", {}, s.url),
      el("td", { class: "served" }, s.version ? `v${s.version}` : "–"),
      el("td", {}, status),
      el("td", {}, t.rps === null || t.rps === undefined ? "…" : number(t.rps, 3)),
      el("td", {}, number(t.p50_ms, 3)),
      el("td", {}, number(t.p99_ms, 3)),
      el("td", {}, t.errors === undefined ? "–" : `${t.errors} / ${t.refused} refused`),
    );
  });
  const head = el(
    "tr",
    {},
    ["service", "serves", "state", "req/s", "p50 ms", "p99 ms", "5xx / 4xx"].map((h) => el("th", {}, h)),
  );
  show(target, el("table", { id: "services" }, el("thead", {}, head), el("tbody", {}, rows)));
  setState(target, "ready");
}

// ------------------------------------------------------------------ live

function predictionRow(p, fresh) {
  const output = typeof p.output === "string" ? p.output : JSON.stringify(p.output);
  return el(
    "tr",
    { class: fresh ? "fresh" : null, "data-id": p.id },
    el("td", {}, p.id),
    el("td", { title: p.logged_at }, when(p.logged_at).slice(11, 19)),
    el("td", {}, `v${p.model_version}`),
    el("td", {}, p.api),
    el("td", {}, p.key ?? "–"),
    el("td", { class: "output", title: output }, output.length > 60 ? `${output.slice(0, 60)}…` : output),
    el("td", {}, number(p.latency_ms, 3)),
  );
}

function addPredictions(rows, fresh) {
  const body = document.querySelector("#predictions tbody");
  for (const p of rows) {
    body.prepend(predictionRow(p, fresh));
    state.lastId = Math.max(state.lastId, p.id);
  }
  while (body.children.length > 50) body.lastElementChild.remove();
}

async function startStream() {
  const label = document.getElementById("stream-state");
  try {
    const first = await api("/predictions?limit=50");
    if (first.rows) addPredictions(first.rows, false);
  } catch (error) {
    label.textContent = `could not read: ${error.message}`;
  }
  const source = new EventSource(`${API}/events?after=${state.lastId}`);
  source.addEventListener("open", () => (label.textContent = "live"));
  source.addEventListener("error", () => (label.textContent = "reconnecting…"));
  source.addEventListener("missing", (event) => (label.textContent = event.data));
  source.addEventListener("prediction", (event) => {
    addPredictions([JSON.parse(event.data)], true);
    state.dirty = true;
  });
}

async function loadLive() {
  const panel = document.querySelector("#live .body");
  let data;
  try {
    data = await api("/live");
  } catch (error) {
    missing(panel, `could not read: ${error.message}`);
    return;
  }
  if (data.missing) {
    missing(panel, data.missing);
    return;
  }
  const quality = data.quality || {};
  const note = quality.known
    ? `${data.predictions} latest predictions; ${quality.known} with known truth`
    : `${data.predictions} latest predictions; no truth has joined them yet`;
  show(panel, el("p", { class: "muted" }, note));
  setState(panel, "ready");
  state.picture = data.picture;
  drawPicture();
  drawQuality(quality);
}

function drawPicture() {
  const picture = state.picture;
  const head = document.querySelector("#live .picture-head");
  const select = head.querySelector(".keys");
  if (!picture) {
    head.querySelector(".title").textContent = "this task draws no picture of its outputs";
    return;
  }
  head.querySelector(".title").textContent = picture.title;
  const keys = Object.keys(picture.keys);
  if (!keys.includes(state.key)) state.key = keys[keys.length - 1];
  select.hidden = keys.length < 2;
  show(select, keys.map((k) => el("option", { value: k, selected: k === state.key }, k || "(all)")));
  select.onchange = () => {
    state.key = select.value;
    drawPicture();
  };
  const part = picture.keys[state.key];
  const names = Object.keys(part.lines);
  const series = [{}].concat(
    names.map((name, n) => ({ label: name, stroke: PALETTE[n % PALETTE.length], width: 2, spanGaps: false })),
  );
  const options = {
    series,
    axes: [{}, { label: picture.kind === "mix" ? "share" : picture.unit }],
    scales: { x: { time: true } },
  };
  chart("live-chart", options, [part.x, ...names.map((n) => part.lines[n])]);
}

function drawQuality(quality) {
  const target = document.getElementById("quality-chart");
  if (!quality.x || !quality.x.length) {
    if (state.charts["quality-chart"]) state.charts["quality-chart"].destroy();
    delete state.charts["quality-chart"];
    show(target, el("p", { class: "muted" }, `live ${quality.name || "quality"}: no truth yet`));
    return;
  }
  chart(
    "quality-chart",
    {
      height: 160,
      series: [{}, { label: `live ${quality.name}`, stroke: "#7a5af8", width: 2, points: { show: true } }],
      scales: { x: { time: true } },
    },
    [quality.x, quality.values],
  );
}

// ------------------------------------------------------------------ health

async function loadHealth() {
  const panel = document.querySelector("#health .body");
  let data;
  try {
    data = await api("/health");
  } catch (error) {
    missing(panel, `could not read: ${error.message}`);
    return;
  }
  if (data.missing) missing(panel, data.missing);
  else {
    show(panel, el("p", { class: "muted" }, `last period tested: ${when(data.last_period)}`));
    setState(panel, "ready");
  }
  drawHealth(data.series || []);
  const alarms = document.querySelector("#health .alarms");
  show(
    alarms,
    (data.alarms || []).length
      ? data.alarms.map((a) =>
          el("li", { class: "bad" }, `${a.signal} v${a.version} from ${when(a.period_start)} (${a.streak} periods) ${a.note || ""}`),
        )
      : [el("li", { class: "good" }, "none")],
  );
  const reports = document.querySelector("#health .reports");
  show(
    reports,
    (data.runs || []).length
      ? data.runs.map((r) =>
          el(
            "li",
            {},
            el("a", { href: r.report, target: "_blank", rel: "noopener" }, `pass ${when(r.started)}`),
            r.mlflow ? el("a", { href: r.mlflow, target: "_blank", rel: "noopener" }, " · MLflow") : null,
            r.alarm ? el("span", { class: "badge bad" }, `alarm ${r.signals}`) : el("span", { class: "badge good" }, "clean"),
          ),
        )
      : [el("li", { class: "muted" }, "no monitor run yet")],
  );
}

function drawHealth(series) {
  const target = document.getElementById("health-chart");
  if (!series.length) {
    show(target);
    return;
  }
  const tables = series.map((s) => [s.x, s.ratio]);
  const data = uPlot.join(tables);
  const lines = series.map((s, n) => ({
    label: `${s.signal} v${s.version}`,
    stroke: PALETTE[n % PALETTE.length],
    width: 2,
    points: { show: true },
    spanGaps: true,
  }));
  chart(
    "health-chart",
    {
      series: [{}].concat(lines),
      axes: [{}, { label: "statistic / threshold" }],
      scales: { x: { time: true } },
      hooks: {
        draw: [
          (u) => {
            // The threshold: a ratio above 1 is a period over its calibrated limit.
            const y = u.valToPos(1, "y", true);
            const ctx = u.ctx;
            ctx.save();
            ctx.strokeStyle = "#b42318";
            ctx.setLineDash([6, 4]);
            ctx.beginPath();
            ctx.moveTo(u.bbox.left, y);
            ctx.lineTo(u.bbox.left + u.bbox.width, y);
            ctx.stroke();
            ctx.restore();
          },
        ],
      },
    },
    data,
  );
}

// ------------------------------------------------------------------ history

function gateText(gate) {
  if (!gate) return null;
  const parts = [gate.method, gate.metric, gate.against && `against ${gate.against}`].filter(Boolean);
  const keys = ["difference", "loss_difference", "statistic", "p_value", "p_value_better", "alpha", "rows"];
  for (const key of keys) {
    if (gate[key] !== undefined && gate[key] !== null) parts.push(`${key} ${number(gate[key])}`);
  }
  if (Array.isArray(gate.interval)) {
    parts.push(`interval [${number(gate.interval[0])}, ${number(gate.interval[1])}]`);
  }
  if (gate.comparison_rows !== undefined && gate.comparison_rows !== null) {
    parts.push(`on ${gate.comparison_rows} rows new to the champion`);
  }
  return `gate: ${parts.join(" · ")}`;
}

async function loadHistory() {
  const panel = document.querySelector("#history .body");
  const list = document.querySelector("#history .timeline");
  let data;
  try {
    data = await api("/history");
  } catch (error) {
    missing(panel, `could not read: ${error.message}`);
    return;
  }
  if (data.missing) {
    missing(panel, data.missing);
    show(list);
    return;
  }
  const decided = (data.deployments || []).filter((d) => d.outcome !== "started");
  show(
    panel,
    el("p", { class: "muted" }, `${data.moves.length} champion moves, newest first`),
    decided.length ? el("h3", {}, "Deployments decided") : null,
    decided.length
      ? el(
          "ul",
          { class: "deployments" },
          decided.slice(0, 10).map((d) =>
            el(
              "li",
              { class: d.outcome === "promoted" ? "good" : "bad" },
              `${when(d.when)} ${d.mode} v${d.version}: ${d.outcome} (${d.why})`,
            ),
          ),
        )
      : null,
  );
  setState(panel, "ready");
  show(
    list,
    data.moves.map((m) =>
      el(
        "li",
        { class: m.action || "promote" },
        el("div", { class: "when" }, when(m.when)),
        el("strong", {}, `${m.action || "promote"}: ${m.from ? `v${m.from}` : "(none)"} → v${m.to}`),
        el("div", { class: "who" }, `by ${m.who || "?"}${m.via ? ` via ${m.via}` : ""}: ${m.why || ""}`),
        m.trigger ? el("div", { class: "gate" }, `trigger: ${m.trigger}`) : null,
        m.skipped ? el("div", { class: "gate" }, `skipped refused: ${m.skipped.map((s) => `v${s.version}`).join(", ")}`) : null,
        el("div", { class: "gate" }, gateText(m.gate)),
      ),
    ),
  );
}

// ------------------------------------------------------------------ act

function fillVersions(versions) {
  const select = document.getElementById("version");
  const chosen = select.value;
  show(
    select,
    versions.map((v) =>
      el(
        "option",
        { value: v.version, selected: v.version === chosen },
        `v${v.version}${v.aliases.length ? ` (${v.aliases.join(", ")})` : ""}${v.refused ? " refused" : ""}`,
      ),
    ),
  );
  if (!chosen) {
    // By default compare with the champion's predecessor, the usual rollback target.
    const older = versions.find((v) => state.champion && Number(v.version) < Number(state.champion));
    if (older) select.value = older.version;
  }
  loadDiff();
}

async function loadDiff() {
  const target = document.getElementById("diff");
  const other = document.getElementById("version").value;
  const title = document.getElementById("diff-title");
  const pair = `${state.champion}:${other}`;
  if (pair === state.diffPair && target.dataset.state === "ready") return;  // unchanged
  state.diffPair = pair;
  if (!state.champion || !other) {
    title.textContent = "";
    show(target);
    return;
  }
  title.textContent = `champion v${state.champion} against v${other}`;
  let data;
  try {
    data = await api(`/diff?a=${encodeURIComponent(state.champion)}&b=${encodeURIComponent(other)}`);
  } catch (error) {
    missing(target, error.message);
    return;
  }
  if (data.missing) {
    missing(target, data.missing);
    return;
  }
  const rows = data.rows
    .filter((r) => r.group !== "params" || r.changed)
    .map((r) =>
      el(
        "tr",
        { class: r.changed ? "changed" : null },
        el("td", {}, r.group),
        el("td", {}, r.field),
        el("td", {}, typeof r.a === "object" && r.a !== null ? JSON.stringify(r.a) : number(r.a)),
        el("td", {}, typeof r.b === "object" && r.b !== null ? JSON.stringify(r.b) : number(r.b)),
      ),
    );
  const head = el("tr", {}, el("th", {}, ""), el("th", {}, "fact"), el("th", {}, `v${data.a.version}`), el("th", {}, `v${data.b.version}`));
  const same = data.rows.filter((r) => r.group === "params" && !r.changed).length;
  show(
    target,
    el("table", { id: "diff-table" }, el("thead", {}, head), el("tbody", {}, rows)),
    el("p", { class: "muted" }, `${same} params are the same in both`),
  );
  setState(target, "ready");
}

async function move(event) {
  event.preventDefault();
  const result = document.getElementById("move-result");
  const action = document.getElementById("action").value;
  const token = document.getElementById("token").value;
  sessionStorage.setItem("loopline-operator", document.getElementById("operator").value);
  const body = {
    action,
    version: action === "rollback" ? null : document.getElementById("version").value,
    reason: document.getElementById("reason").value,
    operator: document.getElementById("operator").value,
    expect: state.champion,
  };
  const button = document.getElementById("move-button");
  button.disabled = true;
  try {
    const entry = await api("/moves", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
    result.className = "good";
    result.textContent = entry.noop
      ? `v${entry.to} is already the champion: nothing recorded`
      : `champion ${entry.from ? `v${entry.from}` : "(none)"} → v${entry.to} (${entry.action}); services follow at their next poll`;
    document.getElementById("reason").value = "";
  } catch (error) {
    result.className = "error";
    result.textContent = `refused: ${error.message}`;
  } finally {
    button.disabled = false;
    await Promise.all([loadNow(), loadHistory()]);
  }
}

// ------------------------------------------------------------------ start

function start() {
  document.getElementById("model-select").addEventListener("change", (event) => {
    location.assign(`/models/${encodeURIComponent(event.target.value)}`);
  });
  document.getElementById("version").addEventListener("change", loadDiff);
  document.getElementById("move-form").addEventListener("submit", move);
  document.getElementById("operator").value = sessionStorage.getItem("loopline-operator") || "";
  if (!ACTIONS) document.getElementById("move-button").disabled = true;
  loadNow();
  loadLive();
  loadHealth();
  loadHistory();
  startStream();
  setInterval(loadNow, 5000);
  setInterval(loadHistory, 15000);
  setInterval(loadHealth, 30000);
  setInterval(() => {
    if (state.dirty) {
      state.dirty = false;
      loadLive();
    }
  }, 5000);
  setInterval(() => (document.getElementById("clock").textContent = when(new Date().toISOString())), 1000);
}

start();
