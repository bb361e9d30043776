// coldbatch dashboard: renders /ui/, /ui/batches/ID and /ui/files from the JSON API under /ui/api/, polling.
// Helpers (el, api, poll, formatting) are in common.js, shared with `coldbatch ui`.
// Rows are updated in place, so keyboard focus survives the live updates.
"use strict";

const TERMINAL = new Set(["completed", "failed", "expired", "cancelled"]);
const STATUSES = ["validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"];
const rates = new Map(); // batch id -> {t, done, rate}: throughput from successive polls
function ended(b) { return b.completed_at || b.failed_at || b.expired_at || b.cancelled_at; }

// Throughput: requests per second between polls (smoothed); before a second poll, the average since in_progress.
function throughput(b, now) {
  const done = b.request_counts.completed + b.request_counts.failed;
  const start = b.in_progress_at;
  if (["expired", "cancelled", "cancelling", "failed"].includes(b.status)) return null; // never-run lines count as failed
  if (b.status === "completed" || b.status === "finalizing") { // the average over the execution
    const end = b.finalizing_at || ended(b);
    return start && end > start ? done / (end - start) : null;
  }
  const prev = rates.get(b.id);
  let rate = null;
  if (prev && now > prev.t) {
    const inst = (done - prev.done) / (now - prev.t);
    rate = prev.rate === null ? inst : 0.5 * inst + 0.5 * prev.rate;
  } else if (start && now > start && done > 0) {
    rate = done / (now - start);
  }
  rates.set(b.id, { t: now, done, rate });
  return rate;
}
function eta(b, rate) {
  const c = b.request_counts;
  if (b.status !== "in_progress") return b.status === "validating" ? "after validation" : "—";
  if (c.completed + c.failed === 0) return "waiting for its turn";
  if (!rate) return "—";
  return duration((c.total - c.completed - c.failed) / rate);
}
const rateText = (r) => (r === null || r === undefined ? "—" : `${r >= 100 ? int(Math.round(r)) : r.toFixed(1)} req/s`);
function ageText(b, now) {
  const windowS = b.expires_at - b.created_at;
  if (TERMINAL.has(b.status)) return `took ${duration((ended(b) || now) - b.created_at)} of ${duration(windowS)}`;
  return `${duration(now - b.created_at)} of ${duration(windowS)}`;
}
function progressCell(b) {
  const c = b.request_counts;
  const done = c.completed + c.failed;
  const text = c.total ? `${int(done)} of ${int(c.total)}` + (c.failed ? ` (${int(c.failed)} failed)` : "") : "—";
  return [
    el("progress", { max: Math.max(c.total, 1), value: done, "aria-label": `Progress of ${b.id}: ${text}` }),
    el("span", { class: "small", text }),
  ];
}

// -- batches list ------------------------------------------------------------------------------------------
function batchesPage() {
  const params = new URLSearchParams(location.search);
  const state = { page: Math.max(1, parseInt(params.get("page") || "1", 10)), status: params.get("status") || "" };
  main.replaceChildren();
  const cards = el("ul", { class: "cards", "aria-label": "Your batches by status" });
  const filter = el("select", { id: "status-filter" }, el("option", { value: "", text: "All statuses" }),
    ...STATUSES.map((s) => el("option", { value: s, text: label(s) })));
  filter.value = state.status;
  filter.addEventListener("change", () => { state.status = filter.value; state.page = 1; navigate(); });
  const caption = el("caption");
  const tbody = el("tbody");
  const table = el("table", {}, caption, el("thead", {}, el("tr", {},
    ...["Batch", "Status", "Progress", "Throughput", "ETA", "Age / window", "Created"].map((h) => el("th", { scope: "col", text: h })))), tbody);
  const newer = el("button", { type: "button", text: "← Newer", onclick: () => { state.page--; navigate(); } });
  const older = el("button", { type: "button", text: "Older →", onclick: () => { state.page++; navigate(); } });
  const pageInfo = el("span", { class: "small" });
  const system = el("section", { class: "panel", "aria-labelledby": "sys-h" });
  main.append(el("h1", { text: "Batches" }), cards,
    el("div", { class: "toolbar" }, el("label", { for: "status-filter", text: "Show" }), filter),
    table, el("nav", { class: "pager", "aria-label": "Pages" }, newer, pageInfo, older),
    el("h2", { id: "sys-h", text: "Engine and queues" }), system);

  function navigate() {
    const q = new URLSearchParams();
    if (state.page > 1) q.set("page", state.page);
    if (state.status) q.set("status", state.status);
    history.replaceState(null, "", "/ui/" + (q.toString() ? "?" + q : ""));
    tbody.replaceChildren();
    poll(refresh, 2000);
  }

  async function refresh() {
    const q = new URLSearchParams({ page: state.page });
    if (state.status) q.set("status", state.status);
    const [list, ov] = await Promise.all([api("/ui/api/batches?" + q), api("/ui/api/overview")]);
    renderCards(cards, list.counts);
    renderRows(tbody, list.batches, list.now);
    const first = list.total ? (list.page - 1) * list.per_page + 1 : 0;
    const last = (list.page - 1) * list.per_page + list.batches.length;
    caption.textContent = list.total ? `Batches ${int(first)}–${int(last)} of ${int(list.total)}, newest first` : "No batches yet.";
    const pages = Math.max(1, Math.ceil(list.total / list.per_page));
    pageInfo.textContent = `Page ${int(list.page)} of ${int(pages)}`;
    newer.disabled = list.page <= 1;
    older.disabled = list.page >= pages;
    renderSystem(system, ov);
    stamp(list.now);
  }
  poll(refresh, 2000);
}

function renderCards(cards, counts) {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const items = [["all", total], ...STATUSES.filter((s) => counts[s]).map((s) => [s, counts[s]])];
  cards.replaceChildren(...items.map(([k, n]) => el("li", {}, el("span", { class: "n", text: int(n) }),
    el("span", { class: "k", text: k === "all" ? "batches" : label(k) }))));
}

function renderRows(tbody, batches, now) {
  const existing = new Map([...tbody.children].map((tr) => [tr.dataset.id, tr]));
  const rows = batches.map((b) => {
    let tr = existing.get(b.id);
    if (!tr) {
      tr = el("tr", { "data-id": b.id }, el("td", {}, el("a", { class: "id", href: `/ui/batches/${b.id}`, text: b.id })),
        el("td"), el("td", { class: "progress" }), el("td", { class: "num" }), el("td"), el("td"), el("td"));
      const desc = b.metadata && b.metadata.description;
      if (desc) tr.cells[0].append(el("div", { class: "small", text: desc }));
    }
    const rate = throughput(b, now);
    const cells = tr.cells;
    if (cells[1].textContent !== label(b.status)) cells[1].replaceChildren(badge(b.status));
    const [bar, text] = progressCell(b);
    const old = cells[2].querySelector("progress");
    if (old) {
      old.max = bar.max; old.value = bar.value; old.setAttribute("aria-label", bar.getAttribute("aria-label"));
      cells[2].querySelector("span").textContent = text.textContent;
    } else cells[2].replaceChildren(bar, text);
    cells[3].textContent = rateText(rate);
    cells[4].textContent = eta(b, rate);
    cells[5].textContent = ageText(b, now);
    cells[6].textContent = when(b.created_at);
    cells[6].className = "when";
    return tr;
  });
  const same = rows.length === tbody.children.length && rows.every((tr, i) => tbody.children[i] === tr);
  if (!same) tbody.replaceChildren(...rows);
}

function renderSystem(box, ov) {
  const e = ov.engine, q = ov.queues, w = e.workers;
  const facts = [
    ["Engine", `${e.name}${e.fixture ? " (test fixture, not a model)" : ""}`],
    ["Workers", w ? `${w.status}: ${w.live} of ${w.workers} live, ${w.restarts} restarts, ${w.crashes} crashes` +
      (Object.keys(w.given_up).length ? `, ${Object.keys(w.given_up).length} given up` : "") : "in the server process"],
    ["Engine slots", `${int(q.in_use)} of ${int(q.capacity)} in use`],
    ["Hot queue", `${int(q.hot_waiting)} synchronous requests waiting`],
    ["Cold queue", `${int(q.cold_waiting)} batch chunks waiting`],
  ];
  const used = el("span", { class: "used" });
  used.style.width = `${Math.min(100, (100 * q.in_use) / Math.max(1, q.capacity))}%`;
  box.replaceChildren(el("dl", { class: "facts" }, ...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])),
    el("div", { class: "bar", role: "img", "aria-label": `Engine slots ${q.in_use} of ${q.capacity} in use` }, used));
}

// -- one batch ---------------------------------------------------------------------------------------------
function batchPage(id) {
  main.replaceChildren();
  const heading = el("h1", {}, "Batch ", el("code", { text: id }));
  const status = el("p", { id: "batch-status", "aria-live": "polite" });
  const bar = el("progress", { max: 1, value: 0, "aria-label": "Progress" });
  const facts = el("dl", { class: "facts" });
  const actions = el("div", { class: "toolbar" });
  const timeline = el("ol", { class: "timeline", "aria-label": "Status changes" });
  const errors = el("div");
  const chart = el("div");
  const samples = []; // [epoch s, requests done] at each poll while the page is open
  main.append(el("p", {}, el("a", { href: "/ui/", text: "← All batches" })), heading, status, bar, actions, chart,
    el("div", { class: "grid" }, el("section", { class: "panel", "aria-labelledby": "facts-h" }, el("h2", { id: "facts-h", text: "Details" }), facts),
      el("section", { class: "panel", "aria-labelledby": "tl-h" }, el("h2", { id: "tl-h", text: "Timeline" }), timeline)),
    el("h2", { id: "err-h", text: "Errors" }), errors);
  let lastStatus = null, finalRenders = 0;

  async function refresh() {
    const d = await api(`/ui/api/batches/${encodeURIComponent(id)}`);
    const b = d.batch, c = b.request_counts, rate = throughput(b, d.now);
    document.title = `${b.id} · ${label(b.status)} · coldbatch`;
    const done = c.completed + c.failed;
    status.replaceChildren(badge(b.status), ` ${int(done)} of ${int(c.total)} requests done: ${int(c.completed)} completed, ${int(c.failed)} failed`);
    status.dataset.status = b.status;
    bar.max = Math.max(c.total, 1); bar.value = done; bar.setAttribute("aria-label", `Progress: ${int(done)} of ${int(c.total)}`);
    renderFacts(facts, d, rate);
    if (b.status !== lastStatus) renderActions(actions, b, refresh);
    renderTimeline(timeline, d.events, b.created_at);
    renderErrors(errors, d.errors, b);
    if (b.status === "in_progress" || samples.length) renderRateChart(chart, samples, d.now, done);
    lastStatus = b.status;
    stamp(d.now);
    if (TERMINAL.has(b.status)) finalRenders++;
    return finalRenders < 2; // stop polling once a terminal batch is shown
  }
  poll(refresh, 1000);
}

// Throughput over time, from the counts seen at each poll since the page was opened.
function renderRateChart(box, samples, now, done) {
  if (!samples.length || samples[samples.length - 1][1] !== done || now - samples[samples.length - 1][0] >= 5) samples.push([now, done]);
  if (samples.length > 600) samples.shift();
  const rates = [];
  for (let i = 1; i < samples.length; i++) {
    const [t0, d0] = samples[i - 1], [t1, d1] = samples[i];
    if (t1 > t0) rates.push([t1, (d1 - d0) / (t1 - t0)]);
  }
  if (rates.length < 2) return;
  const last = rates[rates.length - 1][1], peak = Math.max(...rates.map((r) => r[1]));
  box.replaceChildren(lineChart(rates, `Throughput since this page was opened (${duration(now - samples[0][0])}): ` +
    `now ${rateText(last)}, peak ${rateText(peak)}`, rateText));
}

function fileLink(fileId, text, name) {
  return fileId ? el("a", { href: `/ui/files/${fileId}/content`, download: true, text: text || fileId, "aria-label": name }) : "—";
}

function renderFacts(dl, d, rate) {
  const b = d.batch, u = b.usage;
  const rows = [
    ["Endpoint", b.endpoint], ["Model", b.model || "—"], ["Created", when(b.created_at)],
    ["Age / window", ageText(b, d.now)], ["Expires", when(b.expires_at)],
    ["Throughput", rateText(rate)], ["ETA", eta(b, rate)],
    ["Input file", d.input_file ? fileLink(d.input_file.id, `${d.input_file.filename} (${bytes(d.input_file.bytes)})`) : b.input_file_id + " (deleted)"],
    ["Output file", fileLink(b.output_file_id, b.output_file_id && "Download output")],
    ["Error file", fileLink(b.error_file_id, b.error_file_id && "Download errors")],
    ["Tokens", u ? `${int(u.input_tokens)} in (${int(u.input_tokens_details.cached_tokens)} cached), ${int(u.output_tokens)} out` : "—"],
  ];
  if (b.metadata) rows.push(["Metadata", Object.entries(b.metadata).map(([k, v]) => `${k}=${v}`).join(", ")]);
  dl.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
}

function renderActions(box, b, refresh) {
  box.replaceChildren();
  if (!["validating", "in_progress"].includes(b.status)) return;
  const msg = el("span", { class: "small", role: "status" });
  const cancel = el("button", { type: "button", class: "danger", text: "Cancel batch" });
  const keep = el("button", { type: "button", text: "Keep running", hidden: true });
  cancel.addEventListener("click", async () => {
    if (!cancel.classList.contains("confirm")) {
      cancel.classList.add("confirm"); cancel.textContent = "Yes, cancel this batch"; keep.hidden = false;
      msg.textContent = "Finished requests are kept; the rest go to the error file as batch_cancelled.";
      return;
    }
    cancel.disabled = true; keep.hidden = true; msg.textContent = "Cancelling…";
    try {
      await api(`/ui/api/batches/${encodeURIComponent(b.id)}/cancel`, { method: "POST" });
      msg.textContent = "Cancel requested.";
      await refresh();
    } catch (e) { msg.textContent = `Cancel failed: ${e.message}`; cancel.disabled = false; }
  });
  keep.addEventListener("click", () => {
    cancel.classList.remove("confirm"); cancel.textContent = "Cancel batch"; keep.hidden = true; msg.textContent = "";
    cancel.focus();
  });
  box.append(cancel, keep, msg);
}

function renderTimeline(ol, events, createdAt) {
  let prev = createdAt;
  ol.replaceChildren(...events.map((e) => {
    const li = el("li", {}, badge(e.to_status), ` ${when(e.at)}`,
      e.from_status ? el("span", { class: "small", text: ` · ${duration(e.at - prev)} after ${label(e.from_status)}` }) : null);
    prev = e.at;
    return li;
  }));
}

function renderErrors(box, errors, b) {
  if (!errors.length) {
    box.replaceChildren(el("p", { class: "notice", text: b.request_counts.failed ? "The failed requests are in the error file." : "No errors." }));
    return;
  }
  const failed = b.errors ? errors.length : b.request_counts.failed;
  const head = el("tr", {}, ...["Line", "custom_id", "HTTP", "Code", "Message"].map((h) => el("th", { scope: "col", text: h })));
  const rows = errors.map((e) => el("tr", {}, el("td", { class: "num", text: e.line ?? "—" }), el("td", { class: "id", text: e.custom_id ?? "—" }),
    el("td", { class: "num", text: e.status_code ?? "—" }), el("td", {}, el("code", { text: e.code ?? "—" })), el("td", { text: e.message ?? "" })));
  const caption = b.errors ? `Validation errors: first ${int(errors.length)}` : `First ${int(errors.length)} of ${int(failed)} failed requests, by input line`;
  box.replaceChildren(el("table", { "aria-labelledby": "err-h" }, el("caption", { text: caption }), el("thead", {}, head), el("tbody", {}, ...rows)));
}

// -- files -----------------------------------------------------------------------------------------------
function filesPage() {
  let page = Math.max(1, parseInt(new URLSearchParams(location.search).get("page") || "1", 10));
  main.replaceChildren();
  const tbody = el("tbody");
  const newer = el("button", { type: "button", text: "← Newer", onclick: () => { page--; go(); } });
  const older = el("button", { type: "button", text: "Older →", onclick: () => { page++; go(); } });
  main.append(el("h1", { text: "Files" }), el("table", {}, el("caption", { text: "Your files, newest first" }),
    el("thead", {}, el("tr", {}, ...["File", "Name", "Purpose", "Size", "Created", "Expires", ""].map((h) => el("th", { scope: "col", text: h })))), tbody),
    el("nav", { class: "pager", "aria-label": "Pages" }, newer, older));
  function go() { history.replaceState(null, "", "/ui/files" + (page > 1 ? `?page=${page}` : "")); poll(refresh, 5000); }
  async function refresh() {
    const d = await api(`/ui/api/files?page=${page}`);
    tbody.replaceChildren(...d.files.map((f) => el("tr", {}, el("td", { class: "id", text: f.id }), el("td", { text: f.filename }),
      el("td", { text: f.purpose }), el("td", { class: "num", text: bytes(f.bytes) }), el("td", { class: "when", text: when(f.created_at) }),
      el("td", { class: "when", text: when(f.expires_at) }), el("td", {}, fileLink(f.id, "Download", `Download ${f.filename}`)))));
    if (!d.files.length) tbody.append(el("tr", {}, el("td", { colspan: 7, text: "No files on this page." })));
    newer.disabled = page <= 1; older.disabled = !d.has_more;
    stamp(d.now);
  }
  poll(refresh, 5000);
}

// -- routing -------------------------------------------------------------------------------------------------
function start() {
  if (document.body.dataset.keys === "true") document.querySelector(".logout").hidden = false;
  const path = location.pathname;
  const m = path.match(/^\/ui\/batches\/([^/]+)$/);
  const section = m ? "batches" : path === "/ui/files" ? "files" : "batches";
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === section && !m) a.setAttribute("aria-current", "page");
  }
  if (m) batchPage(decodeURIComponent(m[1]));
  else if (section === "files") filesPage();
  else batchesPage();
}
start();
