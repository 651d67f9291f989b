// Hubble UI page: namespace selector, service map (cytoscape) and live flows table.
// All data comes from this page's server (/api/...), which reads the Hubble relay; the filter
// text is `hubble observe` flags, applied by the server. No framework, no build step.
"use strict";

const MAX_ROWS = 2000;
const TABLE_EVERY_MS = 250;
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
  incoming: [],      // rows received since the last frame (oldest first)
  flushing: false,   // a frame is asked for to insert them
  focusIndex: 0,     // the table's tab stop (index in rows)
  lastFlush: 0,      // when rows were last inserted (performance.now())
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
        "min-zoomed-font-size": 6,
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
        "min-zoomed-font-size": 6,
      },
    },
    {
      selector: "node.group",
      style: {
        shape: "round-rectangle",
        "background-color": "#f6f8fa",
        "background-opacity": 0.6,
        "border-width": 1,
        "border-style": "solid",
        "border-color": "#8c959f",
        "text-valign": "top",
        "text-halign": "center",
        "font-size": 48,
        "font-weight": "bold",
        "min-zoomed-font-size": 0,
        color: "#57606a",
        padding: 16,
      },
    },
    {
      // large maps: haystack edges (no curve computation; the redraw of ~500 edges drops from
      // ~30 ms to ~0 on a busy machine, bench/hubble_ui.py), the direction as a mid arrow
      selector: "edge.fast",
      style: {
        "curve-style": "haystack",
        "haystack-radius": 0,
        "target-arrow-shape": "none",
        "mid-target-arrow-shape": "triangle",
        "mid-target-arrow-color": "data(color)",
      },
    },
    { selector: "node.match", style: { "border-color": "#0969da", "border-width": 4 } },
    { selector: ".faded", style: { opacity: 0.15 } },
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
  const paths = e.http.paths.slice(0, 2).join(",") + (e.http.paths.length > 2 ? ",…" : "");
  const http = e.http.methods.length
    ? ` ${e.http.methods.join(",")} ${paths} ${e.http.codes.join(",")}`.replace(/ +/g, " ")
    : "";
  return `${port} ${e.verdict}${http}`.trim();
}

// Large maps: the layout runs when cards appear, at most once per LAYOUT_EVERY_MS (cards that
// appear in between are put beside a card they talk to); above LARGE_MAP cards the cards are
// grouped (a label key or the namespace: compound boxes placed on a grid, O(n)), labels too
// small to read are not drawn, and the search box highlights the cards it matches.
const LARGE_MAP = 60;
const LAYOUT_EVERY_MS = 2000;
const LARGE_DRAW_EVERY_MS = 2000;
const map = {
  shown: new Map(),   // element id -> signature of what was drawn (only changes are redrawn)
  cards: new Map(),   // card id -> card (the last snapshot)
  group: "auto",      // the select's value
  groupKey: "",       // what "auto" chose (or the select's value)
  lastLayout: 0,
  layoutTimer: null,
  layouts: 0,         // how many layouts ran (the benchmark reads it)
  pending: null,      // the latest snapshot not drawn yet
  drawTimer: null,
  lastDraw: 0,
  searched: false,    // whether cards carry search classes
  large: false,       // whether edges are drawn the cheap way (edge.fast)
};

function labelValue(c, key) {
  if (key === "namespace") return c.namespace || "(outside)";
  const hit = c.labels.find((l) => l.startsWith(key + "="));
  return hit === undefined ? null : hit.slice(key.length + 1);
}

function chooseGroupKey(cards) {
  if (map.group !== "auto") return map.group;
  if (cards.length <= LARGE_MAP) return "";
  // the label key that splits the most cards into 2..24 groups (fewest groups on a tie), else
  // the namespace when there are several
  const values = new Map();
  for (const c of cards) {
    for (const l of c.labels) {
      const i = l.indexOf("=");
      if (i <= 0) continue;
      const key = l.slice(0, i);
      if (!values.has(key)) values.set(key, { seen: new Set(), cards: 0 });
      const v = values.get(key);
      v.seen.add(l.slice(i + 1));
      v.cards += 1;
    }
  }
  let best = "", bestCards = 0, bestGroups = 0;
  for (const [key, v] of values) {
    const n = v.seen.size;
    if (n < 2 || n > 24 || v.cards * 2 < cards.length) continue;
    if (v.cards > bestCards || (v.cards === bestCards && n < bestGroups)) {
      best = key; bestCards = v.cards; bestGroups = n;
    }
  }
  if (best) return best;
  return new Set(cards.map((c) => c.namespace)).size > 1 ? "namespace" : "";
}

function refreshGroupChoices(cards) {
  const keys = new Set();
  for (const c of cards) for (const l of c.labels) if (l.indexOf("=") > 0) keys.add(l.slice(0, l.indexOf("=")));
  const select = $("map-group");
  const want = ["auto", "", "namespace", ...[...keys].sort()];
  if (want.join("\n") !== [...select.options].map((o) => o.value).join("\n")) {
    select.replaceChildren(...want.map((v) => new Option(
      v === "auto" ? `auto${map.groupKey ? " (" + map.groupKey + ")" : ""}` : v || "nothing",
      v,
    )));
  }
  select.value = map.group;
  select.options[0].text = `auto${map.group === "auto" && map.groupKey ? " (" + map.groupKey + ")" : ""}`;
}

function parentOf(c) {
  if (!map.groupKey) return null;
  const v = labelValue(c, map.groupKey);
  return v === null ? null : `group:${map.groupKey}=${v}`;
}

function regroup() {
  // compound boxes: one per value of the group key; cards without it stay outside any box
  const want = new Map();
  for (const c of map.cards.values()) {
    const p = parentOf(c);
    if (p) want.set(p, (want.get(p) || 0) + 1);
  }
  cy.batch(() => {
    for (const c of map.cards.values()) {
      const node = cy.getElementById(c.id);
      const p = parentOf(c);
      if (node.nonempty() && (node.data("parent") || null) !== p) {
        if (p && cy.getElementById(p).empty()) {
          cy.add({ group: "nodes", data: { id: p, label: "", group: true, w: 1, h: 1 }, classes: "group" });
        }
        node.move({ parent: p });
      }
    }
    cy.nodes(".group").forEach((g) => { if (!want.has(g.id())) g.remove(); });
  });
  labelGroups();
}

function labelGroups() {
  cy.batch(() => {
    cy.nodes(".group").forEach((g) => {
      const label = `${g.id().slice(6)} (${g.children().length})`;
      if (g.data("label") !== label) g.data("label", label);
    });
  });
}

function gridPositions() {
  // groups (and the ungrouped cards last) as boxes on a grid, each box a grid of its cards
  const boxes = new Map();
  for (const c of [...map.cards.values()].sort((a, b) => a.name.localeCompare(b.name))) {
    const p = parentOf(c) || "~";
    if (!boxes.has(p)) boxes.set(p, []);
    boxes.get(p).push(c);
  }
  const names = [...boxes.keys()].sort();
  const per = Math.max(1, Math.ceil(Math.sqrt(names.length * 1.6)));
  let cellW = 120, cellH = 60;
  cy.nodes().not(".group").forEach((n) => {
    cellW = Math.max(cellW, n.data("w") + 30);
    cellH = Math.max(cellH, n.data("h") + 24);
  });
  const gap = 90;
  const positions = {};
  let x = 0, y = 0, rowH = 0;
  names.forEach((name, i) => {
    const cards = boxes.get(name);
    const cols = Math.max(1, Math.ceil(Math.sqrt(cards.length)));
    cards.forEach((c, j) => {
      positions[c.id] = { x: x + (j % cols) * cellW, y: y + Math.floor(j / cols) * cellH };
    });
    const h = Math.ceil(cards.length / cols) * cellH;
    rowH = Math.max(rowH, h);
    x += cols * cellW + gap;
    if ((i + 1) % per === 0) { x = 0; y += rowH + gap; rowH = 0; }
  });
  return positions;
}

function runLayout() {
  map.layoutTimer = null;
  map.lastLayout = performance.now();
  map.layouts += 1;
  if (!map.groupKey && map.cards.size <= LARGE_MAP) {
    cy.layout({ name: "breadthfirst", directed: true, spacingFactor: 1.15, padding: 24, animate: false }).run();
    return;
  }
  const positions = gridPositions();
  cy.batch(() => {
    cy.nodes().not(".group").forEach((n) => {
      const p = positions[n.id()];
      if (p) n.position(p);
    });
  });
  cy.fit(undefined, 24);
}

function scheduleLayout(now) {
  if (map.layoutTimer !== null) return;
  const wait = now ? 0 : Math.max(0, map.lastLayout + LAYOUT_EVERY_MS - performance.now());
  if (wait === 0) runLayout();
  else map.layoutTimer = setTimeout(runLayout, wait);
}

function placeBeside(node, snapshotEdges) {
  // until the next layout: beside a card it talks to, else below everything
  for (const e of snapshotEdges) {
    const other = e.source === node.id() ? e.target : e.target === node.id() ? e.source : null;
    if (other === null || other === node.id()) continue;
    const o = cy.getElementById(other);
    if (o.nonempty() && o.data("placed")) {
      node.position({ x: o.position("x") + 60 + Math.random() * 80, y: o.position("y") + 70 });
      return;
    }
  }
  const bb = cy.nodes().boundingBox();
  node.position({ x: bb.x1 + Math.random() * Math.max(1, bb.w), y: bb.y2 + 80 });
}

function mapArrived(snapshot) {
  // a large map costs a whole canvas redraw per change: it is redrawn every LARGE_DRAW_EVERY_MS
  // at most, with the latest snapshot (a small one at once)
  map.pending = snapshot;
  if (map.drawTimer !== null) return;
  const large = snapshot.cards.length > LARGE_MAP;
  const wait = large ? Math.max(0, map.lastDraw + LARGE_DRAW_EVERY_MS - performance.now()) : 0;
  const draw = () => {
    map.drawTimer = null;
    map.lastDraw = performance.now();
    const next = map.pending;
    map.pending = null;
    if (next !== null) drawMap(next);
  };
  if (wait === 0) draw();
  else map.drawTimer = setTimeout(draw, wait);
}

function drawMap(snapshot) {
  const cards = new Map(snapshot.cards.map((c) => [c.id, c]));
  const edges = new Map(snapshot.edges.map((e) => [e.id, e]));
  map.cards = cards;
  const large = snapshot.cards.length > LARGE_MAP;
  const key = chooseGroupKey(snapshot.cards);
  const regrouped = key !== map.groupKey;
  map.groupKey = key;
  const fresh = [];
  cy.batch(() => {
    cy.elements().not(".group").forEach((el) => {
      if (!(el.isNode() ? cards : edges).has(el.id())) { el.remove(); map.shown.delete(el.id()); }
    });
    cy.nodes(".group").forEach((g) => { if (g.children().empty()) g.remove(); });
    for (const c of cards.values()) {
      const lines = cardLabel(c);
      const label = lines.join("\n");
      const sig = `${label}|${c.inside}|${c.namespace === ""}`;
      if (map.shown.get(c.id) === sig) continue;
      map.shown.set(c.id, sig);
      const w = Math.max(90, 7 * Math.max(...lines.map((l) => l.length)) + 20);
      const search = [c.name, c.kind, c.namespace, ...c.labels, ...c.ports].join(" ").toLowerCase();
      const data = {
        id: c.id, name: c.name, kind: c.kind, label, w, h: 16 * lines.length + 14, search,
        pod: c.namespace !== "",
      };
      let node = cy.getElementById(c.id);
      if (node.nonempty()) node.data(data);
      else {
        const p = parentOf(c);
        if (p && cy.getElementById(p).empty()) {
          cy.add({ group: "nodes", data: { id: p, label: "", group: true, w: 1, h: 1 }, classes: "group" });
        }
        node = cy.add({ group: "nodes", data: p ? { ...data, parent: p } : data });
        fresh.push(node);
      }
      node.toggleClass("outside", !c.inside);
      node.toggleClass("reserved", c.namespace === "");
    }
    for (const e of edges.values()) {
      const label = edgeLabel(e);
      const sig = `${label}|${e.verdict}`;
      if (map.shown.get(e.id) === sig) continue;
      map.shown.set(e.id, sig);
      const data = {
        id: e.id, source: e.source, target: e.target, verdict: e.verdict,
        color: COLORS[e.verdict], line: LINE[e.verdict], label,
      };
      const edge = cy.getElementById(e.id);
      if (edge.nonempty()) edge.data(data);
      else cy.add({ group: "edges", data, classes: large ? "fast" : "" });
    }
    if (large !== map.large) cy.edges().toggleClass("fast", large);
  });
  map.large = large;
  if (regrouped) regroup();
  if (fresh.length) {
    const first = cy.nodes().not(".group").length === fresh.length;
    if (!first) for (const n of fresh) placeBeside(n, snapshot.edges);
    for (const n of fresh) n.data("placed", true);
    labelGroups();
    scheduleLayout(first || regrouped);
  } else if (regrouped) {
    scheduleLayout(true);
  }
  refreshGroupChoices(snapshot.cards);
  refreshPolicyChoices(snapshot.cards);
  applySearch();
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
  document.body.dataset.mapCards = String(snapshot.cards.length);
  document.body.dataset.mapEdges = String(snapshot.edges.length);
}

function applySearch() {
  const q = $("map-search").value.trim().toLowerCase();
  const cardsOnly = cy.nodes().not(".group");
  let matched = 0;
  cy.batch(() => {
    if (!q) {
      // touching every element would redraw the whole canvas: only when a search was shown
      if (map.searched) cy.elements().removeClass("match faded");
      map.searched = false;
      return;
    }
    map.searched = true;
    const words = q.split(/\s+/);
    cardsOnly.forEach((n) => {
      const hit = words.every((w) => n.data("search").includes(w));
      n.toggleClass("match", hit);
      n.toggleClass("faded", !hit);
      if (hit) matched += 1;
    });
    cy.edges().forEach((e) => e.toggleClass("faded", !(e.source().hasClass("match") || e.target().hasClass("match"))));
    cy.nodes(".group").forEach((g) => g.toggleClass("faded", g.children(".match").empty()));
  });
  $("map-count").textContent = q ? `${matched} of ${cardsOnly.length} cards` : `${cardsOnly.length} cards`;
  document.body.dataset.mapMatches = q ? String(matched) : "";
}

$("map-search").addEventListener("input", applySearch);
$("map-search").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter") {
    const hits = cy.nodes(".match");
    if (hits.nonempty()) {
      cy.fit(hits, 40);
      if (cy.zoom() > 1) { cy.zoom(1); cy.center(hits); }
    }
  } else if (ev.key === "Escape") {
    $("map-search").value = "";
    applySearch();
  }
});
$("map-group").addEventListener("change", () => {
  map.group = $("map-group").value;
  const key = chooseGroupKey([...map.cards.values()]);
  if (key !== map.groupKey) { map.groupKey = key; regroup(); }
  refreshGroupChoices([...map.cards.values()]);
  scheduleLayout(true);
  applySearch();
});

// ------------------------------------------------------------------ the table

function renderHead() {
  const head = $("flows-head");
  head.replaceChildren(...COLUMNS.filter((c) => state.columns.has(c.key)).map((c) => {
    const th = document.createElement("th");
    th.scope = "col";
    th.dataset.col = c.key;
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
      $("flows-body").replaceChildren();  // every row has other cells now
      renderRows();
    });
    label.append(box, " " + c.title);
    return label;
  }));
}

// The table is virtual: the DOM holds only the rows in view (and OVERSCAN more each side), the
// space of the others is kept by two spacers, so a new batch of flows costs the same with 20 or
// MAX_ROWS rows kept; rows are inserted once per frame whatever the number of events.
const OVERSCAN = 8;
let rowHeight = 22;   // measured on the first rendered row (once: it forces a layout)
let rowHeightMeasured = false;

function rowElement(r, index) {
  const tr = document.createElement("tr");
  tr.dataset.id = r.id;
  tr.dataset.index = String(index);
  tr.dataset.verdict = r.verdict;
  tr.tabIndex = index === state.focusIndex ? 0 : -1;
  tr.setAttribute("aria-selected", String(r.id === state.selected));
  tr.setAttribute("aria-rowindex", String(index + 2));  // the header is row 1
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
  const wrap = $("table-wrap");
  const total = state.rows.length;
  const shown = Math.ceil(wrap.clientHeight / rowHeight) + 1;
  const first = Math.max(0, Math.min(total - shown, Math.floor(wrap.scrollTop / rowHeight)) - OVERSCAN);
  const last = Math.min(total, first + shown + 2 * OVERSCAN);
  const focused = document.activeElement && document.activeElement.closest
    ? document.activeElement.closest("#flows-body tr") : null;
  // keyed: rows still in view keep their element (only their index changes), so a frame
  // creates and styles only the rows that came into view
  const body = $("flows-body");
  const wanted = new Set();
  for (let i = first; i < last; i++) wanted.add(state.rows[i].id);
  for (const tr of [...body.children]) if (!wanted.has(tr.dataset.id)) tr.remove();
  let cursor = body.firstElementChild;
  let tabStop = null;
  for (let i = first; i < last; i++) {
    const r = state.rows[i];
    let tr;
    if (cursor !== null && cursor.dataset.id === r.id) {
      tr = cursor;
      cursor = cursor.nextElementSibling;
      if (tr.dataset.index !== String(i)) {
        tr.dataset.index = String(i);
        tr.setAttribute("aria-rowindex", String(i + 2));
      }
      tr.tabIndex = i === state.focusIndex ? 0 : -1;
    } else {
      tr = rowElement(r, i);
      body.insertBefore(tr, cursor);
    }
    if (tr.tabIndex === 0) tabStop = tr;
  }
  while (cursor !== null) { const next = cursor.nextElementSibling; cursor.remove(); cursor = next; }
  if (tabStop === null && body.firstElementChild) body.firstElementChild.tabIndex = 0;
  if (!rowHeightMeasured && body.firstElementChild) {
    const h = body.firstElementChild.getBoundingClientRect().height;
    if (h > 0) { rowHeight = h; rowHeightMeasured = true; }
  }
  $("rows-before").style.height = `${first * rowHeight}px`;
  $("rows-after").style.height = `${(total - last) * rowHeight}px`;
  $("flows").setAttribute("aria-rowcount", String(total + 1));
  if (focused) {
    const again = $("flows-body").querySelector(`tr[data-index="${focused.dataset.index}"]`);
    if (again) again.focus({ preventScroll: true });
  }
  document.body.dataset.rows = String(total);
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
  // one DOM update per TABLE_EVERY_MS at most (in a frame), however many events arrived: nobody
  // reads 80 rows a second, and each update costs a frame
  state.incoming.push(...rows);
  if (!state.flushing) {
    state.flushing = true;
    const wait = Math.max(0, state.lastFlush + TABLE_EVERY_MS - performance.now());
    setTimeout(() => requestAnimationFrame(flushRows), wait);
  }
}

function flushRows() {
  state.flushing = false;
  state.lastFlush = performance.now();
  // rows arrive oldest first; the table shows newest first (at most MAX_ROWS are kept)
  const rows = state.incoming.length > MAX_ROWS ? state.incoming.slice(-MAX_ROWS) : state.incoming;
  state.incoming = [];
  const fresh = rows.filter((r) => !state.byId.has(r.id)).reverse();
  state.received += fresh.length;
  for (const r of fresh) state.byId.set(r.id, r);
  if (isPaused()) {
    state.pending = fresh.concat(state.pending);
    for (const old of state.pending.splice(MAX_ROWS)) state.byId.delete(old.id);
    showPaused();
    return;
  }
  insertRows(fresh);
}

function insertRows(fresh) {
  if (!fresh.length) return;
  state.rows = fresh.concat(state.rows);
  for (const old of state.rows.splice(MAX_ROWS)) state.byId.delete(old.id);
  if (state.focusIndex >= state.rows.length) state.focusIndex = 0;
  renderRows();
}

let scrollFrame = false;
$("table-wrap").addEventListener("scroll", () => {
  if (!isPaused() && state.pending.length) {
    const pending = state.pending;
    state.pending = [];
    insertRows(pending);
  }
  showPaused();
  if (!scrollFrame) {
    scrollFrame = true;
    requestAnimationFrame(() => { scrollFrame = false; renderRows(); });
  }
});

// keyboard: one tab stop in the table; arrows move, Enter opens, Escape closes the panel
$("flows-body").addEventListener("keydown", (ev) => {
  const tr = ev.target.closest("tr");
  if (!tr) return;
  const at = Number(tr.dataset.index);
  let next = null;
  if (ev.key === "ArrowDown") next = at + 1;
  else if (ev.key === "ArrowUp") next = at - 1;
  else if (ev.key === "Home") next = 0;
  else if (ev.key === "End") next = state.rows.length - 1;
  else if (ev.key === "Enter" || ev.key === " ") { openPanel(tr.dataset.id); ev.preventDefault(); return; }
  else return;
  ev.preventDefault();
  if (next >= 0 && next < state.rows.length) focusIndex(next);
});

function focusIndex(index) {
  // scrolls the row into view (rendering it), then focuses it
  state.focusIndex = index;
  const wrap = $("table-wrap");
  const head = $("flows-head").getBoundingClientRect().height;
  const top = index * rowHeight;
  if (top < wrap.scrollTop) wrap.scrollTop = index === 0 ? 0 : top;
  else if (top + rowHeight > wrap.scrollTop + wrap.clientHeight - head) {
    wrap.scrollTop = top + rowHeight - wrap.clientHeight + head;
  }
  renderRows();
  const tr = $("flows-body").querySelector(`tr[data-index="${index}"]`);
  if (tr) {
    for (const other of $("flows-body").querySelectorAll('tr[tabindex="0"]')) other.tabIndex = -1;
    tr.tabIndex = 0;
    tr.focus({ preventScroll: true });
  }
}

function focusRow(tr) {
  focusIndex(Number(tr.dataset.index));
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
  const index = state.rows.findIndex((r) => r.id === state.selected);
  if (index >= 0) focusIndex(index);
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

// ------------------------------------------------------------------ a workload's policy

// What may reach a workload and what it may reach (per port), and "what if": from the server's
// policy view (the cluster's policies and pods through its API, the agents' policy engine).
const wpanel = { id: null, opener: null };

function refreshPolicyChoices(cards) {
  const select = $("policy-of");
  const pods = cards.filter((c) => c.namespace !== "").sort((a, b) => a.id.localeCompare(b.id));
  const want = ["", ...pods.map((c) => c.id)];
  if (want.join("\n") === [...select.options].map((o) => o.value).join("\n")) return;
  select.replaceChildren(new Option("a workload…", ""), ...pods.map((c) => new Option(
    c.inside ? `${c.name} (${c.kind})` : `${c.namespace}/${c.name} (${c.kind})`, c.id)));
  select.value = wpanel.id || "";
}

function policyList(direction) {
  const out = [];
  const state = document.createElement("p");
  state.className = "policy-state";
  state.textContent = direction.enforced
    ? `enforced (default deny) by ${direction.enforced_by.join(", ") || "the agents' mode"}; allowed:`
    : "not enforced: no policy selects it for this direction, everything is allowed";
  out.push(state);
  const ul = document.createElement("ul");
  for (const port of direction.ports) {
    for (const entry of port.peers) {
      const li = document.createElement("li");
      li.dataset.port = port.port;
      li.dataset.verdict = entry.verdict;
      li.dataset.peers = entry.peers.join(" ");
      const v = document.createElement("span");
      v.className = entry.verdict;
      v.textContent = entry.verdict;
      const why = entry.rules.join(", ");
      li.append(`${port.port}: ${entry.peers.join(", ")} `, v, why.startsWith("(") ? ` ${why}` : ` by ${why}`);
      ul.append(li);
    }
  }
  out.push(ul);
  return out;
}

async function openWorkload(id) {
  if (!id) return;
  wpanel.id = id;
  wpanel.opener = document.activeElement;
  $("policy-of").value = id;
  $("panel").hidden = true;
  $("wpanel").hidden = false;
  $("wpanel-error").textContent = "";
  $("whatif-result").textContent = "";
  $("wpanel-ingress").replaceChildren();
  $("wpanel-egress").replaceChildren();
  $("wpanel-title").textContent = id;
  try {
    const [view, choices] = await Promise.all([
      getJSON(`/api/policy?${new URLSearchParams({ workload: id })}`),
      getJSON("/api/policy/workloads"),
    ]);
    if (wpanel.id !== id) return;  // another one was opened meanwhile
    $("wpanel-title").textContent = `${view.workload.name} (${view.workload.kind})`;
    $("wpanel-ingress").replaceChildren(...policyList(view.ingress));
    $("wpanel-egress").replaceChildren(...policyList(view.egress));
    if (view.refused.length) $("wpanel-error").textContent = `refused policies: ${view.refused.join("; ")}`;
    const from = $("whatif-from");
    from.replaceChildren(...choices.workloads.filter((w) => w.id !== id).map((w) => new Option(w.name, w.id)));
    document.body.dataset.policyOf = id;
  } catch (err) {
    $("wpanel-error").textContent = err.message;
  }
  $("wpanel-close").focus();
}

async function whatIf() {
  const q = new URLSearchParams({
    from: $("whatif-from").value, to: wpanel.id, port: $("whatif-port").value, protocol: $("whatif-proto").value,
  });
  const out = $("whatif-result");
  out.textContent = "…";
  try {
    const r = await getJSON(`/api/policy/trace?${q}`);
    const v = document.createElement("span");
    v.className = r.allowed ? "allowed" : "denied";
    v.textContent = r.allowed ? "ALLOWED" : "DENIED";
    out.dataset.allowed = String(r.allowed);
    out.replaceChildren(`${r.source} → ${r.destination} ${r.port}: `, v, ` — ${r.text}`);
  } catch (err) {
    out.dataset.allowed = "";
    out.textContent = err.message;
  }
}

function closeWorkload() {
  $("wpanel").hidden = true;
  wpanel.id = null;
  $("policy-of").value = "";
  if (wpanel.opener && wpanel.opener.focus) wpanel.opener.focus();
}

cy.on("tap", "node", (ev) => { if (!ev.target.hasClass("group") && ev.target.data("pod")) openWorkload(ev.target.id()); });
$("policy-of").addEventListener("change", () => {
  if ($("policy-of").value) openWorkload($("policy-of").value); else closeWorkload();
});
$("wpanel-close").addEventListener("click", closeWorkload);
$("whatif").addEventListener("submit", (ev) => { ev.preventDefault(); whatIf(); });
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && !$("wpanel").hidden) closeWorkload();
});

// ------------------------------------------------------------------ the stream

function setStatus(text) { $("status").textContent = text; }

function openStream() {
  if (state.source) state.source.close();
  state.rows = []; state.byId.clear(); state.pending = []; state.selected = null;
  state.incoming = []; state.focusIndex = 0;
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
  es.addEventListener("map", (ev) => mapArrived(JSON.parse(ev.data)));
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

window.hubbleUI = { cy, state, map, openPanel };
start();
