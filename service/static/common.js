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
    ctx.strokeStyle = c;
    ctx.lineWidth = line;
    ctx.strokeRect(b.x_min, b.y_min, b.x_max - b.x_min, b.y_max - b.y_min);
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
