// Shared by the page's modules: DOM and drawing helpers, the API call with the session's key,
// and the detection parameters as the controls set them.

export const $ = (id) => document.getElementById(id);
export const KEY_STORE = "yoloserve.apiKey";

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

export function colour(classId) {
  return `hsl(${(classId * 137.508) % 360}, 78%, 42%)`;
}

export function fmt(value, digits = 1) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

export function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

export async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { error: { message: text } }; }
  if (!response.ok) {
    const err = (body && body.error) || {};
    const message = response.status === 401
      ? "the service wants an API key: enter it at the top"
      : `${response.status} ${err.code || ""}: ${err.message || response.statusText}`;
    throw new Error(message);
  }
  return body;
}

export function say(id, message, isError = false) {
  const node = $(id);
  node.textContent = message;
  node.classList.toggle("error", isError);
}

export function params() {
  const out = {
    conf: $("conf").value,
    iou: $("iou").value,
    max_det: $("max-det").value,
  };
  const boxes = [...document.querySelectorAll("#class-filter input[type=checkbox]")];
  const kept = boxes.filter((b) => b.checked).map((b) => b.value);
  if (kept.length < boxes.length) out.classes = kept.join(",");
  return out;
}

export function classesSelected() {
  return document.querySelectorAll("#class-filter input[type=checkbox]:checked").length > 0;
}

// which keypoints are joined: COCO's 17-point skeleton, else each to the next in a ring
const COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7],
  [6, 8], [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]];
function skeleton(n) {
  if (n === 17) return COCO_SKELETON.map(([a, b]) => [a - 1, b - 1]);
  return n > 2 ? [...Array(n).keys()].map((i) => [i, (i + 1) % n]) : [];
}

function path(ctx, points) {
  ctx.beginPath();
  points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  ctx.closePath();
}

// a segmenter's masks (filled, half opacity), an oriented box, a pose model's keypoints
function drawTaskParts(ctx, d, c, line) {
  if (d.mask && d.mask.polygons) {
    ctx.globalAlpha = 0.45;
    ctx.fillStyle = c;
    for (const polygon of d.mask.polygons) if (polygon.length >= 3) { path(ctx, polygon); ctx.fill(); }
    ctx.globalAlpha = 1;
  }
  if (d.keypoints) {
    const k = d.keypoints;
    ctx.strokeStyle = c;
    ctx.lineWidth = Math.max(1, line / 2);
    for (const [a, b] of skeleton(k.length)) {
      if (k[a].confidence < 0.5 || k[b].confidence < 0.5) continue;
      ctx.beginPath(); ctx.moveTo(k[a].x, k[a].y); ctx.lineTo(k[b].x, k[b].y); ctx.stroke();
    }
    for (const p of k) {
      if (p.confidence < 0.5) continue;
      ctx.beginPath(); ctx.arc(p.x, p.y, line + 2, 0, 2 * Math.PI);
      ctx.fillStyle = "#fff"; ctx.fill(); ctx.stroke();
    }
  }
}

export function drawDetections(canvas, source, width, height, detections, withTracks = false) {
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(source, 0, 0, width, height);
  const line = Math.max(2, Math.round(width / 320));
  const size = Math.max(12, Math.round(width / 45));
  ctx.font = `600 ${size}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  for (const d of detections) {
    const b = d.box_2d;
    const c = colour(d.class_id);
    drawTaskParts(ctx, d, c, line);
    ctx.strokeStyle = c;
    ctx.lineWidth = line;
    if (d.polygon) { path(ctx, d.polygon); ctx.stroke(); }  // an oriented box: its corners
    else ctx.strokeRect(b.x_min, b.y_min, b.x_max - b.x_min, b.y_max - b.y_min);
    const track = withTracks && d.track_id !== null && d.track_id !== undefined ? `#${d.track_id} ` : "";
    const label = `${track}${d.class_name} ${d.confidence.toFixed(2)}`;
    const w = ctx.measureText(label).width + 6;
    const y = b.y_min - size - 4 >= 0 ? b.y_min - size - 4 : b.y_min;
    ctx.fillStyle = c;
    ctx.fillRect(b.x_min - line / 2, y, w, size + 4);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, b.x_min + 3 - line / 2, y + 2);
  }
}
