// `coldbatch ui`: the job ledger — jobs, units and rounds, cost estimate vs actual, dedup and cache, rows by
// outcome, a sample of OUTPUT. Helpers (el, api, poll, formatting) are in common.js, shared with the server's
// dashboard. Read only.
"use strict";

const FINISHED = new Set(["done", "cancelled", "failed"]);
const usd = (v) => (v === null || v === undefined ? "—" : `$${Number(v).toFixed(v < 1 ? 4 : 2)}`);
const num = (v) => (v === null || v === undefined ? "—" : int(v));

function table(caption, headers, rows) {
  return el("table", {}, el("caption", { text: caption }),
    el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((c) => (c instanceof Node ? el("td", {}, c) : el("td", { text: c ?? "—" })))))));
}
function facts(pairs) {
  return el("dl", { class: "facts" }, ...pairs.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v ?? "—")]));
}
function section(id, title, ...children) {
  return el("section", { class: "panel", "aria-labelledby": id }, el("h2", { id, text: title }), ...children);
}

// -- jobs list ------------------------------------------------------------------------------------------
function jobsPage() {
  const box = el("div");
  main.replaceChildren(el("h1", { text: "Jobs" }), box);
  poll(async () => {
    const d = await api("/api/jobs");
    box.replaceChildren(table(`${int(d.jobs.length)} jobs in ${d.ledger}, newest first`,
      ["Job", "Status", "Model", "Rows", "Succeeded", "Failed", "Cost", "Saving", "Created"],
      d.jobs.map((j) => [el("a", { href: `/jobs/${encodeURIComponent(j.id)}`, class: "id", text: j.id }), badge(j.status), j.model,
        num(j.rows), num(j.succeeded), num(j.failed), usd(j.cost_usd), j.saving_pct === null || j.saving_pct === undefined ? "—" : `${j.saving_pct}%`,
        when(j.created_at)])));
    stamp(d.now);
  }, 3000);
}

// -- one job -------------------------------------------------------------------------------------------
function jobPage(id) {
  main.replaceChildren(el("p", {}, el("a", { href: "/", text: "← All jobs" })), el("h1", {}, "Job ", el("code", { text: id })));
  const body = el("div");
  main.append(body);
  poll(async () => {
    const d = await api(`/api/jobs/${encodeURIComponent(id)}`);
    document.title = `${id} · ${d.job.status} · coldbatch jobs`;
    body.replaceChildren(
      el("p", { id: "job-status", "data-status": d.job.status, "aria-live": "polite" }, badge(d.job.status),
        ` ${d.mode || ""} job, ${d.model || ""}: ${d.job.input_path} → ${d.job.output_path}`),
      outcomeCards(d),
      el("div", { class: "grid" }, costSection(d), dedupSection(d)),
      collectedChart(d),
      unitsSection(d), sampleSection(d));
    stamp(d.now);
    return !FINISHED.has(d.job.status);
  }, 3000);
}

function outcomeCards(d) {
  const r = d.report || {}, s = d.summary;
  const items = [["rows", r.rows], ["succeeded", r.succeeded ?? s.succeeded], ["failed", r.failed ?? s.failed],
    ["rejected at prepare", r.rejected_rows], ["waiting for a retry", s.pending_retry], ["rows retried", s.retried_rows],
    ["rounds", Math.max(0, ...d.units.map((u) => u.round))]];
  const codes = Object.entries(s.failed_by_code || {});
  return el("div", {}, el("ul", { class: "cards", "aria-label": "Rows by outcome" },
    ...items.filter(([, n]) => n !== undefined && n !== null).map(([k, n]) => el("li", {}, el("span", { class: "n", text: int(n) }), el("span", { class: "k", text: k })))),
    codes.length ? el("p", { class: "small", text: "Failed by code: " + codes.map(([c, n]) => `${c || "—"} ${int(n)}`).join(", ") }) : null);
}

// The cost comparison as bars: every row sync, batch (estimate), after dedup and cache (estimate), paid.
function costSection(d) {
  const t = (d.estimate && d.estimate.totals) || {}, r = d.report || {};
  const bars = [["Sync, every row", r.cost_sync_all_rows_usd ?? t.sync_cost_usd], ["Batch (estimate)", t.batch_cost_usd],
    ["After dedup and cache (estimate)", t.final_cost_usd], ["Paid", r.cost_usd]].filter(([, v]) => v !== undefined && v !== null);
  const top = Math.max(1e-12, ...bars.map(([, v]) => v));
  const chart = el("dl", { class: "facts" }, ...bars.flatMap(([k, v]) => {
    const fill = el("span", { class: "used" });
    fill.style.width = `${(100 * v) / top}%`;
    return [el("dt", { text: k }), el("dd", {}, el("div", { class: "bar", role: "img", "aria-label": `${k}: ${usd(v)}` }, fill), el("span", { class: "small", text: usd(v) }))];
  }));
  return section("cost-h", "Cost: estimate vs actual", bars.length ? chart : el("p", { class: "notice", text: "No price known for this model." }),
    facts([["Saving vs sync", r.saving_pct === null || r.saving_pct === undefined ? "—" : `${r.saving_pct}%`],
      ["Tokens in / out", `${num(d.summary.prompt_tokens)} / ${num(d.summary.completion_tokens)} (cached ${num(d.summary.cached_tokens)})`],
      ["Estimated input tokens", num(r.estimated_input_tokens ?? t.input_tokens_to_send)]]));
}

function dedupSection(d) {
  const p = (d.estimate && d.estimate.plan) || {}, r = d.report || {};
  return section("dedup-h", "Dedup and cache", facts([["Requests (rows)", num(p.requests)], ["Distinct questions", num(p.distinct_requests)],
    ["Cache hits", num(p.cache_hits)], ["Sent", num(p.requests_to_send ?? r.requests_sent)], ["Rows answered from the cache", num(r.answered_from_cache)],
    ["Route", d.estimate && d.estimate.route ? JSON.stringify(d.estimate.route) : d.mode]]));
}

// Requests collected over time: each unit's collection adds its requests (a step per collected batch).
function collectedChart(d) {
  const done = d.units.filter((u) => u.state === "collected").sort((a, b) => a.updated_at - b.updated_at);
  if (!done.length) return null;
  const points = [[d.job.created_at, 0]];
  let total = 0;
  for (const u of done) { points.push([u.updated_at, total]); total += u.requests; points.push([u.updated_at, total]); }
  const span = done[done.length - 1].updated_at - d.job.created_at;
  const caption = `Requests collected: ${int(total)} in ${duration(span)} over ${int(done.length)} batches` +
    (span > 0 ? `, ${(total / span).toFixed(1)} req/s on average` : "");
  // Everything collected within the same second has no "over time" to draw: say so instead of an empty frame.
  const body = span > 0 ? lineChart(points, caption, (v) => int(Math.round(v)))
    : el("p", { class: "notice", role: "img", "aria-label": caption, text: caption });
  return el("section", { "aria-labelledby": "tp-h" }, el("h2", { id: "tp-h", text: "Throughput over time" }), body);
}

function unitsSection(d) {
  const rows = d.units.map((u) => [String(u.id), String(u.round), String(u.try), badge(u.state), u.batch_status || "—",
    u.batch_id ? (u.batch_url ? el("a", { href: u.batch_url, class: "id", text: u.batch_id, rel: "noreferrer" }) : el("span", { class: "id", text: u.batch_id })) : "—",
    int(u.requests), int(u.tokens), u.detail || "", when(u.updated_at)]);
  return el("section", { "aria-labelledby": "units-h" }, el("h2", { id: "units-h", text: "Units and rounds" }),
    table("Each unit is one request file sent as one batch; retries of failed rows are new units of the next round.",
      ["Unit", "Round", "Try", "State", "Batch status", "Provider batch", "Requests", "Tokens", "Detail", "Updated"], rows));
}

function sampleSection(d) {
  const s = d.sample;
  const content = s ? table(`First ${s.rows.length} rows of ${d.job.output_path}`, s.columns, s.rows)
    : el("p", { class: "notice", text: "OUTPUT is written when the job finishes." });
  return el("section", { "aria-labelledby": "sample-h" }, el("h2", { id: "sample-h", text: "OUTPUT sample" }), content);
}

function start() {
  const m = location.pathname.match(/^\/jobs\/([^/]+)$/);
  if (m) jobPage(decodeURIComponent(m[1]));
  else {
    document.querySelector("[data-nav=jobs]").setAttribute("aria-current", "page");
    jobsPage();
  }
}
start();
