// The live panel (GET /v1/stats), the drift table (GET /v1/monitoring) and the model card
// (GET /v1/model).

import { $, api, colour, el, fmt, say } from "./common.js";

export async function pollStats() {
  if (document.hidden) return;
  let s;
  try { s = await api("/v1/stats"); } catch { return; }
  $("live-span").textContent = `this process, the last ${Math.round(s.span_s)} s (${s.requests} requests)`;
  $("stat-ips").textContent = fmt(s.images_per_s);
  $("stat-queue").textContent = String(s.queue_depth);
  $("stat-p50").textContent = s.latency_ms.p50 === null ? "–" : `${fmt(s.latency_ms.p50)} ms`;
  $("stat-p99").textContent = s.latency_ms.p99 === null ? "–" : `${fmt(s.latency_ms.p99)} ms`;
  $("stat-refusals").textContent = String(s.refusals_total);
  $("stat-inflight").textContent = String(s.inflight_batches);
  const most = Math.max(1, ...Object.values(s.batch_sizes));
  $("batch-table").querySelector("tbody").replaceChildren(...Object.entries(s.batch_sizes).map(([size, n]) => {
    const bar = el("span", { className: "bar" });
    bar.style.width = `${Math.max(2, (n / most) * 12)}rem`;
    return el("tr", {}, el("td", {}, size), el("td", {}, bar, String(n)));
  }));
}

function distributions(canvas, c, countBins, confBins) {
  const base = c.baseline || { per_image: [], confidence: [] };
  const groups = [[base.per_image, c.window.per_image, countBins],
                  [base.confidence, c.window.confidence, confBins]];
  const width = 220, height = 48, gap = 14;
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  const slots = countBins + confBins;
  const slot = (width - gap) / slots;
  let x = 0;
  for (const [b, w, n] of groups) {
    const bt = b.reduce((a, v) => a + v, 0) || 1;
    const wt = w.reduce((a, v) => a + v, 0) || 1;
    for (let i = 0; i < n; i++) {
      const hb = ((b[i] || 0) / bt) * (height - 2);
      const hw = ((w[i] || 0) / wt) * (height - 2);
      ctx.fillStyle = style.getPropertyValue("--base");
      ctx.fillRect(x + i * slot, height - hb, slot / 2 - 1, hb);
      ctx.fillStyle = style.getPropertyValue("--now");
      ctx.fillRect(x + i * slot + slot / 2 - 1, height - hw, slot / 2 - 1, hw);
    }
    x += n * slot + gap;
  }
}

export async function pollDrift() {
  if (document.hidden) return;
  let m;
  try { m = await api("/v1/monitoring"); } catch { return; }
  const line = {
    disabled: "monitoring is turned off",
    starting: "the model is loading",
    capturing_baseline: `capturing the baseline: ${m.baseline_images || 0} of ${m.baseline_target} images`,
    filling_window: `baseline of ${m.baseline_images} images; the window holds ${m.window_images} images`,
    scoring: `baseline of ${m.baseline_images} images; window of the last ${m.window_images} images; warning above ${m.threshold}`,
  }[m.state] || m.state;
  $("drift-state").textContent = line;
  $("drift-table").querySelector("tbody").replaceChildren(...m.classes.map((c) => {
    const chip = el("span", { className: "chip" });
    chip.style.background = colour(c.class_id);
    const high = c.score !== null && c.score > m.threshold;
    const meter = el("meter", { min: 0, max: Math.max(1, m.threshold * 2), low: m.threshold * 0.4,
                                high: m.threshold, optimum: 0, value: c.score || 0,
                                "aria-label": `drift of ${c.class_name}` });
    const canvas = el("canvas", { role: "img",
      "aria-label": `${c.class_name}: baseline and window distributions` });
    distributions(canvas, c, m.count_bins.length, m.confidence_bins);
    return el("tr", { dataset: { className: c.class_name } },
      el("td", {}, chip, c.class_name),
      el("td", {}, `${c.baseline ? fmt(c.baseline.rate, 2) : "–"} → ${fmt(c.window.rate, 2)}`),
      el("td", { className: `drift-score ${high ? "drift-high" : "drift-ok"}` }, meter, " ", fmt(c.score, 3)),
      el("td", {}, canvas));
  }));
}

// The stored evaluation (`yoloserve evaluate`) at the precision served, against FP32.
function accuracy(ev) {
  if (!ev || ev.map50_95 == null) return "not evaluated (yoloserve evaluate)";
  const pts = (x) => (x * 100).toFixed(1);
  let text = `mAP50-95 ${pts(ev.map50_95)}`;
  if (ev.precision !== "fp32" && ev.fp32_map50_95 != null) {
    text += ` (FP32 ${pts(ev.fp32_map50_95)})`;
  }
  if (ev.box_agreement != null && ev.precision !== "fp32") {
    text += ` · ${(ev.box_agreement * 100).toFixed(1)} % of FP32's boxes`;
  }
  return ev.data ? `${text} on ${ev.data}` : text;
}

export async function loadModel(onLoaded) {
  let m;
  try {
    m = await api("/v1/model");
  } catch (err) {
    say("model-line", `the model card is not available: ${err.message}`, true);
    setTimeout(() => loadModel(onLoaded), 2000);
    return;
  }
  $("model-line").textContent = `${m.name} ${m.version} · ${m.backend} on ${m.device} (${m.precision})`;
  const rows = [["Name", m.name], ["Version", m.version], ["Backend", m.backend], ["Device", m.device],
                ["Precision", m.precision], ["Accuracy", accuracy(m.evaluation)],
                ["Input size", `${m.input_size} px, ${m.letterbox || "square"} letterbox`],
                ["Classes", Object.values(m.classes).join(", ")],
                ["Batching", `up to ${m.max_batch_size} images, waiting ${m.max_wait_ms} ms`]];
  $("model-card").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  onLoaded(m);
}
