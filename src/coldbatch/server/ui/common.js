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

