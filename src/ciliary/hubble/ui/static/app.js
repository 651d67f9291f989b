// Hubble UI page: namespace selector, service map (cytoscape) and live flows table.
// All data comes from this page's server (/api/...), which reads the Hubble relay; the filter
// text is `hubble observe` flags, applied by the server. No framework, no build step.
"use strict";

const MAX_ROWS = 1000;
const COLUMNS = [
  { key: "time", title: "Time", text: (r) => r.time.replace("T", " ").replace(/Z$/, "").replace(/(\.\d{3})\d+$/, "$1") },
  { key: "node", title: "Node", text: (r) => r.node, hidden: true },
  { key: "source", title: "Source", text: (r) => r.source },
  { key: "destination", title: "Destination", text: (r) => r.destination },
  { key: "port", title: "Port", text: (r) => (r.port == null ? r.protocol : `${r.port}/${r.protocol}`) },
  { key: "l7", title: "L7 info", text: (r) => r.l7 },
  { key: "verdict", title: "Verdict", text: (r) => r.verdict },
  { key: "drop_reason", title: "Drop reason", text: (r) => r.drop_reason },
  { key: "summary", title: "Summary", text: (r) => r.summary, hidden: true },
];
const COLORS = { forwarded: "#1a7f37", dropped: "#cf222e", mixed: "#9a6700" };
const LINE = { forwarded: "solid", dropped: "dashed", mixed: "dotted" };

const $ = (id) => document.getElementById(id);
const state = {
  namespace: "",
  filter: "",
  rows: [],          // newest first, as shown
  byId: new Map(),   // row id -> row
  pending: [],       // rows received while paused (newest first)
  selected: null,    // id of the row whose panel is open
  source: null,      // EventSource
  columns: new Set(COLUMNS.filter((c) => !c.hidden).map((c) => c.key)),
  received: 0,
};

// ------------------------------------------------------------------ the map

const cy = cytoscape({
  container: $("map"),
  wheelSensitivity: 0.2,
  minZoom: 0.2,
  maxZoom: 2.5,
  style: [
    {
      selector: "node",
      style: {
        shape: "round-rectangle",
        "background-color": "#ffffff",
        "border-width": 2,
        "border-color": "#57606a",
        label: "data(label)",
        "text-wrap": "wrap",
        "text-valign": "center",
        "text-halign": "center",
        "font-family": "Liberation Sans, DejaVu Sans, sans-serif",
        "font-size": 11,
        color: "#1f2328",
        width: "data(w)",
        height: "data(h)",
      },
    },
    { selector: "node.outside", style: { "border-style": "dashed", "background-color": "#f6f8fa" } },
    { selector: "node.reserved", style: { "background-color": "#fff8c5" } },
    {
      selector: "edge",
      style: {
        width: 2.5,
        "curve-style": "bezier",
        "target-arrow-shape": "triangle",
        "line-color": "data(color)",
        "target-arrow-color": "data(color)",
        "line-style": "data(line)",
        label: "data(label)",
        "font-size": 10,
        "text-background-color": "#ffffff",
        "text-background-opacity": 0.9,
        "text-background-padding": 2,
        "text-rotation": "autorotate",
        color: "data(color)",
      },
    },
    { selector: ":selected", style: { "border-color": "#0969da", "border-width": 3 } },
  ],
});

function cardLabel(c) {
  const lines = [c.name, c.namespace && !c.inside ? `${c.kind} · ${c.namespace}` : c.kind];
  if (c.labels.length) lines.push(c.labels.slice(0, 4).join(", ") + (c.labels.length > 4 ? " …" : ""));
  if (c.ports.length) lines.push("ports: " + c.ports.join(", "));
  return lines;
}

function edgeLabel(e) {
  const port = e.port == null ? e.protocol : `${e.protocol}/${e.port}`;
  const http = e.http.methods.length ? ` ${e.http.methods.join(",")} ${e.http.codes.join(",")}` : "";
  return `${port} ${e.verdict}${http}`.trim();
}

function drawMap(snapshot) {
  const cards = new Map(snapshot.cards.map((c) => [c.id, c]));
  const edges = new Map(snapshot.edges.map((e) => [e.id, e]));
  let added = false;
  cy.batch(() => {
    cy.elements().forEach((el) => {
      if (!(el.isNode() ? cards : edges).has(el.id())) el.remove();
    });
    for (const c of cards.values()) {
      const lines = cardLabel(c);
      const w = Math.max(90, 7 * Math.max(...lines.map((l) => l.length)) + 20);
      const data = { id: c.id, name: c.name, kind: c.kind, label: lines.join("\n"), w, h: 16 * lines.length + 14 };
      const node = cy.getElementById(c.id);
      if (node.nonempty()) node.data(data);
      else { cy.add({ group: "nodes", data }); added = true; }
      const n = cy.getElementById(c.id);
      n.toggleClass("outside", !c.inside);
      n.toggleClass("reserved", c.namespace === "");
    }
    for (const e of edges.values()) {
      const data = {
        id: e.id, source: e.source, target: e.target, verdict: e.verdict,
        color: COLORS[e.verdict], line: LINE[e.verdict], label: edgeLabel(e),
      };
      const edge = cy.getElementById(e.id);
      if (edge.nonempty()) edge.data(data);
      else { cy.add({ group: "edges", data }); added = true; }
    }
  });
  if (added) {
    cy.layout({ name: "breadthfirst", directed: true, spacingFactor: 1.15, padding: 24, animate: false }).run();
  }
  // the map as text: for screen readers, and what the tests read
  const list = $("map-list");
  list.replaceChildren(...snapshot.edges.map((e) => {
    const li = document.createElement("li");
    const src = cards.get(e.source), dst = cards.get(e.target);
    li.dataset.source = src.name;
    li.dataset.destination = dst.name;
    li.dataset.verdict = e.verdict;
    li.textContent = `${src.name} → ${dst.name} ${edgeLabel(e)}`;
    return li;
  }));
  document.body.dataset.mapEdges = String(snapshot.edges.length);
}

// ------------------------------------------------------------------ the table

function renderHead() {
  const head = $("flows-head");
  head.replaceChildren(...COLUMNS.filter((c) => state.columns.has(c.key)).map((c) => {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = c.title;
    return th;
  }));
  const choices = $("column-choices");
  choices.replaceChildren(...COLUMNS.map((c) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = state.columns.has(c.key);
    box.addEventListener("change", () => {
      if (box.checked) state.columns.add(c.key); else state.columns.delete(c.key);
      localStorage.setItem("hubble-ui-columns", JSON.stringify([...state.columns]));
      renderHead();
      renderRows();
    });
    label.append(box, " " + c.title);
    return label;
  }));
}

function rowElement(r) {
  const tr = document.createElement("tr");
  tr.dataset.id = r.id;
  tr.dataset.verdict = r.verdict;
  tr.tabIndex = -1;
  tr.setAttribute("aria-selected", String(r.id === state.selected));
  if (r.id === state.selected) tr.classList.add("selected");
  for (const c of COLUMNS) {
    if (!state.columns.has(c.key)) continue;
    const td = document.createElement("td");
    td.textContent = c.text(r) || "";
    td.dataset.col = c.key;
    if (c.key === "verdict") td.className = `verdict ${r.verdict_class}`;
    tr.append(td);
  }
  return tr;
}

function renderRows() {
  const body = $("flows-body");
  body.replaceChildren(...state.rows.map(rowElement));
  fixTabStop();
}

function fixTabStop() {
  const body = $("flows-body");
  const rows = body.rows;
  if (!rows.length) return;
  const current = body.querySelector('tr[tabindex="0"]');
  if (!current) (body.querySelector("tr.selected") || rows[0]).tabIndex = 0;
}

function isPaused() {
  return $("table-wrap").scrollTop > 4;
}

function showPaused() {
  const el = $("paused");
  el.hidden = state.pending.length === 0;
  el.textContent = `paused: ${state.pending.length} new flows (scroll to the top to see them)`;
}

function addRows(rows) {
  // rows arrive oldest first; the table shows newest first
  const fresh = rows.filter((r) => !state.byId.has(r.id)).reverse();
  state.received += fresh.length;
  for (const r of fresh) state.byId.set(r.id, r);
  if (isPaused()) {
    state.pending = fresh.concat(state.pending);
    showPaused();
    return;
  }
  insertRows(fresh);
}

function insertRows(fresh) {
  if (!fresh.length) return;
  const body = $("flows-body");
  const frag = document.createDocumentFragment();
  for (const r of fresh) frag.append(rowElement(r));
  body.prepend(frag);
  state.rows = fresh.concat(state.rows);
  while (state.rows.length > MAX_ROWS) {
    const old = state.rows.pop();
    state.byId.delete(old.id);
    body.lastElementChild.remove();
  }
  fixTabStop();
  document.body.dataset.rows = String(state.rows.length);
}

$("table-wrap").addEventListener("scroll", () => {
  if (!isPaused() && state.pending.length) {
    const pending = state.pending;
    state.pending = [];
    insertRows(pending);
  }
  showPaused();
});

// keyboard: one tab stop in the table; arrows move, Enter opens, Escape closes the panel
$("flows-body").addEventListener("keydown", (ev) => {
  const tr = ev.target.closest("tr");
  if (!tr) return;
  let next = null;
  if (ev.key === "ArrowDown") next = tr.nextElementSibling;
  else if (ev.key === "ArrowUp") next = tr.previousElementSibling;
  else if (ev.key === "Home") next = tr.parentElement.firstElementChild;
  else if (ev.key === "End") next = tr.parentElement.lastElementChild;
  else if (ev.key === "Enter" || ev.key === " ") { openPanel(tr.dataset.id); ev.preventDefault(); return; }
  else return;
  ev.preventDefault();
  if (next) focusRow(next);
});

function focusRow(tr) {
  for (const other of $("flows-body").querySelectorAll('tr[tabindex="0"]')) other.tabIndex = -1;
  tr.tabIndex = 0;
  tr.focus();
}

$("flows-body").addEventListener("click", (ev) => {
  const tr = ev.target.closest("tr");
  if (tr) { focusRow(tr); openPanel(tr.dataset.id); }
});

// ------------------------------------------------------------------ the side panel

function policyText(p) {
  return `${p.kind || "policy"} ${p.namespace ? p.namespace + "/" : ""}${p.name}`;
}

function openPanel(id) {
  const r = state.byId.get(id);
  if (!r) return;
  state.selected = id;
  for (const tr of $("flows-body").querySelectorAll("tr.selected")) {
    tr.classList.remove("selected");
    tr.setAttribute("aria-selected", "false");
  }
  const tr = $("flows-body").querySelector(`tr[data-id="${CSS.escape(id)}"]`);
  if (tr) { tr.classList.add("selected"); tr.setAttribute("aria-selected", "true"); }
  const summary = [
    ["Time", r.time], ["Node", r.node],
    ["Source", `${r.source} (${r.source_ip})`], ["Destination", `${r.destination} (${r.destination_ip})`],
    ["Port", r.port == null ? r.protocol : `${r.port}/${r.protocol}`],
    ["Verdict", r.verdict], ["Drop reason", r.drop_reason], ["Direction", r.direction],
    ["L7", r.l7], ["Summary", r.summary],
  ].filter(([, v]) => v);
  $("panel-summary").replaceChildren(...summary.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    if (k === "Verdict") dd.className = `verdict ${r.verdict_class}`;
    return [dt, dd];
  }));
  $("panel-why").replaceChildren(...whyElements(r));
  $("panel-json").textContent = JSON.stringify(r.flow, null, 2);
  $("panel").hidden = false;
  $("panel-close").focus();
}

function whyElements(r) {
  const p = r.policies;
  const out = [];
  const groups = [
    ["ingress_allowed_by", "Allowed at ingress by"], ["egress_allowed_by", "Allowed at egress by"],
    ["ingress_denied_by", "Denied at ingress by"], ["egress_denied_by", "Denied at egress by"],
  ];
  for (const [key, title] of groups) {
    if (!p[key]) continue;
    const div = document.createElement("div");
    div.className = "why";
    div.append(title + ": ");
    p[key].forEach((pol, i) => {
      const span = document.createElement("span");
      span.className = "policy";
      span.textContent = policyText(pol);
      if (i) div.append(", ");
      div.append(span);
    });
    out.push(div);
  }
  if (p.default_deny) {
    const div = document.createElement("div");
    div.className = "why";
    div.append("Default deny by: ");
    p.default_deny.policies.forEach((name, i) => {
      const span = document.createElement("span");
      span.className = "policy";
      span.textContent = name;
      if (i) div.append(", ");
      div.append(span);
    });
    const expl = document.createElement("p");
    expl.textContent = p.default_deny.explanation;
    out.push(div, expl);
  }
  if (!out.length) {
    const div = document.createElement("div");
    div.className = "muted";
    div.textContent = "No policy named: no policy selects these endpoints for this direction, " +
      "or this event is not the one that decided (a trace of an established connection).";
    out.push(div);
  }
  return out;
}

function closePanel() {
  $("panel").hidden = true;
  const tr = $("flows-body").querySelector(`tr[data-id="${CSS.escape(state.selected || "")}"]`);
  if (tr) focusRow(tr);
}

$("panel-close").addEventListener("click", closePanel);
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && !$("panel").hidden) closePanel();
});

function endpointFlag(side, name, ip) {
  const dir = side === "source" ? "from" : "to";
  if (name.includes("/")) return `--${dir}-pod ${name}`;
  if (name === ip || !name) return `--${dir}-ip ${ip}`;
  return `--${dir}-identity ${name}`;
}

for (const button of document.querySelectorAll("#panel [data-filter]")) {
  button.addEventListener("click", () => {
    const r = state.byId.get(state.selected);
    if (!r) return;
    const what = button.dataset.filter;
    let flag;
    if (what === "source") flag = endpointFlag("source", r.source, r.source_ip);
    else if (what === "destination") flag = endpointFlag("destination", r.destination, r.destination_ip);
    else if (what === "verdict") flag = `--verdict ${r.verdict}`;
    else if (r.port != null) flag = `--to-port ${r.port}`;
    else return;
    const text = $("filter").value.trim();
    $("filter").value = text ? `${text} ${flag}` : flag;
    $("panel").hidden = true;
    applyFilter();
  });
}

// ------------------------------------------------------------------ the stream

function setStatus(text) { $("status").textContent = text; }

function openStream() {
  if (state.source) state.source.close();
  state.rows = []; state.byId.clear(); state.pending = []; state.selected = null;
  $("panel").hidden = true;
  renderRows(); showPaused();
  $("filter-error").textContent = "";
  const url = new URL(location.href);
  url.searchParams.set("namespace", state.namespace);
  if (state.filter) url.searchParams.set("filter", state.filter); else url.searchParams.delete("filter");
  history.replaceState(null, "", url);
  if (!state.namespace) return;
  const q = new URLSearchParams({ namespace: state.namespace, filter: state.filter });
  const es = new EventSource(`/api/flows/stream?${q}`);
  state.source = es;
  setStatus("connecting…");
  es.addEventListener("open", () => setStatus("live"));
  es.addEventListener("flows", (ev) => { setStatus("live"); addRows(JSON.parse(ev.data)); });
  es.addEventListener("map", (ev) => drawMap(JSON.parse(ev.data)));
  es.addEventListener("failure", (ev) => {
    const msg = JSON.parse(ev.data);
    es.close();
    if (msg.filter) $("filter-error").textContent = msg.message;
    else setStatus(`stopped: ${msg.message}`);
  });
  es.addEventListener("error", () => {
    if (es.readyState === EventSource.CONNECTING) setStatus("reconnecting…");
  });
}

function applyFilter() {
  state.filter = $("filter").value.trim();
  openStream();
}

$("filter-form").addEventListener("submit", (ev) => { ev.preventDefault(); applyFilter(); });
$("filter-clear").addEventListener("click", () => { $("filter").value = ""; applyFilter(); });
$("namespace").addEventListener("change", () => { state.namespace = $("namespace").value; openStream(); });

async function getJSON(path) {
  const resp = await fetch(path);
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || resp.statusText);
  return body;
}

async function loadNamespaces() {
  try {
    const { namespaces } = await getJSON("/api/namespaces");
    const select = $("namespace");
    const wanted = state.namespace;
    const names = new Set(namespaces);
    if (wanted) names.add(wanted);
    const sorted = [...names].sort();
    if (sorted.join() !== [...select.options].map((o) => o.value).join()) {
      select.replaceChildren(...sorted.map((n) => new Option(n, n)));
    }
    if (!state.namespace && sorted.length) {
      state.namespace = names.has("default") ? "default" : sorted[0];
      openStream();
    }
    select.value = state.namespace;
    if (!sorted.length) setStatus("no flows yet: waiting for traffic");
  } catch (err) {
    setStatus(`namespaces: ${err.message}`);
  }
}

async function loadNodes() {
  try {
    const { nodes } = await getJSON("/api/nodes");
    const up = nodes.filter((n) => n.state === "NODE_CONNECTED").length;
    $("nodes").textContent = `${up}/${nodes.length} nodes connected`;
  } catch (err) {
    $("nodes").textContent = `nodes: ${err.message}`;
  }
}

function start() {
  const params = new URLSearchParams(location.search);
  state.namespace = params.get("namespace") || "";
  state.filter = params.get("filter") || "";
  $("filter").value = state.filter;
  try {
    const saved = JSON.parse(localStorage.getItem("hubble-ui-columns") || "null");
    if (Array.isArray(saved)) state.columns = new Set(saved);
  } catch (_) { /* a bad saved value: the defaults */ }
  renderHead();
  if (state.namespace) openStream();
  loadNamespaces();
  loadNodes();
  setInterval(loadNamespaces, 5000);
  setInterval(loadNodes, 10000);
}

window.hubbleUI = { cy, state, openPanel };
start();
