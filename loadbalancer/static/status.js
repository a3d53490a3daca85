// The balancer's status page: GET /lb/status every second, with the admin token when one is given.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_STORE = "yoloserve.lbToken";
let previous = null;  // {at, requests: {id: n}} for requests/s

const LABELS = ["Backend", "Health", "State", "Weight", "Effective weight", "In flight", "Ejections",
                "Requests/s", "Requests", "Errors", "Latency (EWMA)"];

function cell(text, className = "") {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function row(b, rate) {
  const tr = document.createElement("tr");
  tr.dataset.backend = b.id;
  const errors = Object.values(b.totals.errors || {}).reduce((a, n) => a + n, 0);
  tr.append(
    cell(b.url, "url"),
    cell(b.health, `health health-${b.health}`),
    cell(b.state + (b.ejected ? " (ejected)" : ""), `health-${b.state}`),
    cell(String(b.weight), "weight"),
    cell(b.effective_weight.toFixed(2), "effective-weight"),
    cell(String(b.inflight), "inflight"),
    cell(String(b.ejections), "ejections"),
    cell(rate === null ? "–" : rate.toFixed(1), "rate"),
    cell(String(b.totals.requests), "requests"),
    cell(String(errors), "errors"),
    cell(`${b.ewma_ms.toFixed(1)} ms`, "ewma"),
  );
  tr.querySelectorAll("td").forEach((td, i) => { td.dataset.label = LABELS[i]; });  // narrow screens
  return tr;
}

async function refresh() {
  if (document.hidden) return;
  const token = sessionStorage.getItem(TOKEN_STORE);
  let response;
  try {
    response = await fetch("/lb/status", { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  } catch (err) {
    $("error").textContent = `the balancer does not answer: ${err.message}`;
    return;
  }
  if (response.status === 401) {
    $("error").textContent = "the balancer wants its admin token: enter it at the top";
    return;
  }
  if (!response.ok) {
    $("error").textContent = `status ${response.status}`;
    return;
  }
  const status = await response.json();
  // the gRPC backends (--grpc-port), balanced per call, in the same table
  const grpc = status.grpc ? status.grpc.backends.map((b) => ({ ...b, id: `gRPC ${b.id}` })) : [];
  status.backends = status.backends.concat(grpc);
  $("error").textContent = "";
  const now = performance.now();
  const requests = Object.fromEntries(status.backends.map((b) => [b.id, b.totals.requests]));
  const rates = {};
  for (const b of status.backends) {
    const before = previous && previous.requests[b.id];
    rates[b.id] = before === undefined || before === null ? null
      : Math.max(0, (b.totals.requests - before) / ((now - previous.at) / 1000));
  }
  previous = { at: now, requests };
  const healthy = status.backends.filter((b) => b.health === "healthy").length;
  $("summary").textContent = `${status.policy} · ${healthy} of ${status.backends.length} backends healthy · `
    + `${status.inflight} in flight${status.panic ? " · PANIC: every backend gets traffic" : ""}`;
  $("backends").querySelector("tbody").replaceChildren(...status.backends.map((b) => row(b, rates[b.id])));
  document.body.dataset.backends = String(status.backends.length);
}

function init() {
  const token = $("admin-token");
  token.value = sessionStorage.getItem(TOKEN_STORE) || "";
  token.addEventListener("input", () => {
    if (token.value) sessionStorage.setItem(TOKEN_STORE, token.value);
    else sessionStorage.removeItem(TOKEN_STORE);
    refresh();
  });
  refresh();
  setInterval(refresh, 1000);
}

document.addEventListener("DOMContentLoaded", init);
