// coldbatch dashboards (the server's /ui/ and `coldbatch ui` over the job ledger): the helpers both use.
// Plain DOM, text only (never innerHTML with data: filenames, metadata and rows are the user's data).
"use strict";

const main = document.getElementById("main");
let timer = null;

// -- helpers ---------------------------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

async function api(path, options = {}) {
  const r = await fetch(path, { credentials: "same-origin", ...options });
  if (r.status === 401) {
    location.assign("/ui/login?next=" + encodeURIComponent(location.pathname)); // (the server's dashboard only)
    throw new Error("not logged in");
  }
  const body = await r.json();
  if (!r.ok) {
    const err = new Error((body.error && body.error.message) || r.statusText);
    err.status = r.status;
    throw err;
  }
  return body;
}

const nf = new Intl.NumberFormat("en");
const int = (n) => nf.format(n);
function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "—";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min` + (s % 60 ? ` ${s % 60} s` : "");
  if (s <= 172800) return `${Math.floor(s / 3600)} h` + (s % 3600 >= 60 ? ` ${Math.floor((s % 3600) / 60)} min` : "");
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}
function when(epoch) {
  if (!epoch) return "—";
  const d = new Date(epoch * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}
function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB"];
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
  return `${n.toFixed(1)} ${units[i]}`;
}
const label = (status) => status.replace("_", " ");
const badge = (status) => el("span", { class: `badge s-${status}`, text: label(status) });
function stamp(now) { document.getElementById("updated").textContent = `Updated ${when(now)}`; }
function fail(err) {
  let box = document.getElementById("load-error");
  if (!box) { box = el("p", { id: "load-error", class: "error", role: "alert" }); main.prepend(box); }
  box.textContent = `Could not refresh: ${err.message}. Retrying.`;
}
function clearFail() { const box = document.getElementById("load-error"); if (box) box.remove(); }
function poll(fn, ms) {
  clearTimeout(timer);
  const run = async () => {
    let again = true;
    if (!document.hidden) {
      try { again = (await fn()) !== false; clearFail(); } catch (e) {
        if (e.status === 404) {
          main.replaceChildren(el("h1", { text: "Not found" }), el("p", { text: `${e.message} ` },
            el("a", { href: document.querySelector(".brand").getAttribute("href"), text: "Back to the list" })));
          return;
        }
        fail(e);
      }
    }
    if (again) timer = setTimeout(run, ms);
  };
  run();
}


// A small line chart (inline SVG, no library): points [[x, y], ...] with x in epoch seconds. The figure has a
// text caption that says what the lines say, for screen readers and for a quick read.
function lineChart(points, caption, yFormat) {
  const W = 600, H = 110, P = 4;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", caption);
  svg.setAttribute("class", "chart");
  if (points.length >= 2) {
    const x0 = points[0][0], x1 = points[points.length - 1][0];
    const ymax = Math.max(1e-9, ...points.map((p) => p[1]));
    const yscale = ymax * 1.25; // headroom: a flat line stays off the top edge and its label
    const sx = (x) => P + ((W - 2 * P) * (x - x0)) / Math.max(1e-9, x1 - x0);
    const sy = (y) => H - P - ((H - 2 * P) * y) / yscale;
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" "));
    line.setAttribute("class", "line");
    const axis = document.createElementNS(ns, "line");
    for (const [k, v] of Object.entries({ x1: P, y1: H - P, x2: W - P, y2: H - P })) axis.setAttribute(k, v);
    axis.setAttribute("class", "axis");
    svg.append(axis, line);
    const top = document.createElementNS(ns, "text");
    top.setAttribute("x", W - P - 2); top.setAttribute("y", 14); top.setAttribute("class", "tick");
    top.setAttribute("text-anchor", "end");
    top.textContent = `max ${yFormat(ymax)}`;
    svg.append(top);
  }
  return el("figure", { class: "chart-box" }, svg, el("figcaption", { class: "small", text: caption }));
}
