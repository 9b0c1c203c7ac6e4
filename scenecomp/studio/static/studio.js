// scenecomp studio: draw masks, add objects and edit them; the server keeps the scene (one per tab).
// Masks are kept here as the model's pixels (row-major Uint8Array, 1 = inside) and sent as COCO
// uncompressed RLE, so what the page shows is exactly what the server paints.
"use strict";

const $ = (id) => document.getElementById(id);
const view = $("view");
const ctx = view.getContext("2d");
const studio = {          // window.studio: the page's state, also read by the browser tests
  state: null,            // the server's last answer (see scenecomp/studio/app.py: state)
  version: 0,             // bumped on every state shown
  selected: null,         // index of the selected object
  mask: null,             // the mask being drawn
  polygon: [],            // polygon points so far, in model pixels
  drag: null,             // {tool, start, last, now} while a pointer is down
};
window.studio = studio;
const SESSION_KEY = "scenecomp-studio-session";
const HINTS = {
  brush: "Paint the new object's mask; then pick a category and Add.",
  erase: "Erase parts of the mask you are drawing.",
  box: "Drag a box to add it to the mask.",
  polygon: "Click the corners; double-click (or Enter) closes the polygon; Esc drops it.",
  select: "Click an object to select it (the topmost one under the pointer).",
  move: "Drag the selected object to move it.",
};
let image = new Image();
image.onload = draw;

// ------------------------------------------------------------------ talking to the server

async function api(method, path, body, raw) {
  const options = {method, headers: {}};
  if (body !== undefined) {
    options.body = raw ? body : JSON.stringify(body);
    options.headers["Content-Type"] = raw ? "application/octet-stream" : "application/json";
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error(`the studio server does not answer (${e.message}); is scenecomp-studio still running?`);
  }
  let data = null;
  try { data = await response.json(); } catch (e) { /* reported below */ }
  if (!response.ok || data === null) {
    const error = new Error((data && data.error) || `the server answered ${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

let queue = Promise.resolve();

// Run actions one after another; each shows the new state, or its error on the page.
function act(action) {
  queue = queue.then(async () => {
    document.body.classList.add("busy");
    const start = performance.now();
    try {
      const state = await action();
      if (state) {
        show(state);
        say("");
        $("timing").textContent = `last edit: ${state.ms} ms on the server, ${Math.round(performance.now() - start)} ms round trip`;
      }
    } catch (e) {
      say(e.message);
      if (e.status === 404 && studio.state && /scene is gone/.test(e.message)) {
        try { show(await newSession()); } catch (again) { say(`${e.message}\n${again.message}`); }
      }
    } finally {
      document.body.classList.remove("busy");
    }
  });
  return queue;
}

async function newSession(seed) {
  const state = await api("POST", "/api/session", seed === undefined ? {} : {seed});
  sessionStorage.setItem(SESSION_KEY, state.session);
  return state;
}

function edit(body) {
  return act(() => api("POST", `/api/session/${studio.state.session}/edit`, body));
}

function say(text, kind) {
  const box = $("message");
  box.textContent = text;
  box.className = kind || "";
  box.hidden = !text;
}

// ------------------------------------------------------------------ showing the state

function show(state) {
  const first = !studio.state || studio.state.resolution !== state.resolution;
  studio.state = state;
  const R = state.resolution;
  if (first || !studio.mask) studio.mask = new Uint8Array(R * R);
  for (const obj of state.objects) obj.mask = decodeRuns(obj.counts, R);
  if (studio.selected !== null && studio.selected >= state.objects.length) studio.selected = null;

  $("model").textContent = `${state.categories.join(", ")} · ${R}×${R}`;
  $("bg-seed").value = state.background_seed;
  for (const id of ["add-category", "sel-category"]) {
    const select = $(id);
    if (select.options.length !== state.categories.length) {
      select.replaceChildren(...state.categories.map((c) => new Option(c, c)));
    }
  }
  $("undo").disabled = !state.undo;
  $("redo").disabled = !state.redo;
  const base = `/api/session/${state.session}`;
  $("dl-png").href = `${base}/scene.png`;
  $("dl-layout").href = `${base}/layout.json`;
  $("dl-ora").href = `${base}/scene.ora`;

  $("objects").replaceChildren(...state.objects.map((obj, i) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `${obj.category} (seed ${obj.seed})`;
    button.onclick = () => select(i);
    item.append(button);
    return item;
  }));
  $("strip").replaceChildren(...state.steps.map((url, t) => {
    const figure = document.createElement("figure");
    const img = new Image();
    img.src = url;
    img.alt = t === 0 ? "background" : `after object ${t}`;
    const caption = document.createElement("figcaption");
    caption.textContent = t === 0 ? `background ${state.background_seed}` : `${t}: ${state.objects[t - 1].category}`;
    figure.append(img, caption);
    return figure;
  }));
  showSelection();
  image.src = state.image;
  studio.version += 1;
  document.body.dataset.version = studio.version;
}

function select(i) {
  studio.selected = i;
  showSelection();
  draw();
}

function showSelection() {
  const i = studio.selected, objects = studio.state.objects;
  [...$("objects").children].forEach((li, k) => li.classList.toggle("selected", k === i));
  $("selected-panel").hidden = i === null;
  if (i === null) return;
  $("sel-label").textContent = `${i + 1}: ${objects[i].category} (seed ${objects[i].seed})`;
  $("sel-category").value = objects[i].category;
  $("backward").disabled = i === 0;
  $("forward").disabled = i === objects.length - 1;
}

function draw() {
  const state = studio.state;
  if (!state) return;
  const R = state.resolution, W = view.width;
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, W, W);
  if (image.complete && image.naturalWidth) ctx.drawImage(image, 0, 0, W, W);
  const overlay = new ImageData(R, R);
  const paint = (mask, dx, dy, rgba) => {
    for (let y = 0; y < R; y++) for (let x = 0; x < R; x++) {
      const sx = x - dx, sy = y - dy;
      if (sx < 0 || sy < 0 || sx >= R || sy >= R || !mask[sy * R + sx]) continue;
      overlay.data.set(rgba, 4 * (y * R + x));
    }
  };
  const drag = studio.drag;
  if (studio.selected !== null) {
    const mask = state.objects[studio.selected].mask;
    const moving = drag && drag.tool === "move";
    paint(mask, 0, 0, [255, 220, 0, moving ? 40 : 70]);
    if (moving) paint(mask, Math.round(drag.now[0] - drag.start[0]), Math.round(drag.now[1] - drag.start[1]), [255, 220, 0, 140]);
  }
  paint(studio.mask, 0, 0, [0, 150, 255, 140]);
  const layer = document.createElement("canvas");
  layer.width = layer.height = R;
  layer.getContext("2d").putImageData(overlay, 0, 0);
  ctx.drawImage(layer, 0, 0, W, W);

  const s = W / R;
  ctx.strokeStyle = "#0096ff";
  ctx.lineWidth = 2;
  if (drag && drag.tool === "box") {
    const [x0, y0] = drag.start, [x1, y1] = drag.now;
    ctx.strokeRect(Math.min(x0, x1) * s, Math.min(y0, y1) * s, Math.abs(x1 - x0) * s, Math.abs(y1 - y0) * s);
  }
  if (studio.polygon.length) {
    ctx.beginPath();
    studio.polygon.forEach(([x, y], k) => (k ? ctx.lineTo(x * s, y * s) : ctx.moveTo(x * s, y * s)));
    ctx.stroke();
    for (const [x, y] of studio.polygon) ctx.fillRect(x * s - 3, y * s - 3, 6, 6);
  }
}

// ------------------------------------------------------------------ masks (model pixels; a pixel is inside when its centre is)

function decodeRuns(counts, R) {
  const mask = new Uint8Array(R * R);
  let k = 0, value = 0;
  for (const run of counts) {
    if (value) for (let j = k; j < k + run; j++) mask[(j % R) * R + Math.floor(j / R)] = 1;  // column-major
    k += run;
    value = 1 - value;
  }
  return mask;
}

function encodeRuns(mask, R) {
  const counts = [];
  let value = 0, run = 0;
  for (let x = 0; x < R; x++) for (let y = 0; y < R; y++) {
    if (mask[y * R + x] === value) { run++; continue; }
    counts.push(run);
    value = 1 - value;
    run = 1;
  }
  counts.push(run);
  return counts;
}

function fill(inside, value) {
  const R = studio.state.resolution;
  for (let y = 0; y < R; y++) for (let x = 0; x < R; x++) if (inside(x + 0.5, y + 0.5)) studio.mask[y * R + x] = value;
}

function stamp(from, to, value) {
  const r = Number($("brush-size").value);
  const steps = Math.max(1, Math.ceil(Math.hypot(to[0] - from[0], to[1] - from[1]) * 2));
  for (let k = 0; k <= steps; k++) {
    const cx = from[0] + (to[0] - from[0]) * k / steps, cy = from[1] + (to[1] - from[1]) * k / steps;
    fill((x, y) => (x - cx) ** 2 + (y - cy) ** 2 <= r * r || (Math.floor(x) === Math.floor(cx) && Math.floor(y) === Math.floor(cy)), value);
  }
}

function fillPolygon(points) {
  fill((x, y) => {
    let inside = false;
    for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
      const [xi, yi] = points[i], [xj, yj] = points[j];
      if ((yi > y) !== (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) inside = !inside;
    }
    return inside;
  }, 1);
}

function closePolygon() {
  if (studio.polygon.length >= 3) fillPolygon(studio.polygon);
  else if (studio.polygon.length) say("a polygon needs at least 3 corners", "info");
  studio.polygon = [];
  draw();
}

function topmostAt([x, y]) {
  const R = studio.state.resolution, px = Math.floor(x), py = Math.floor(y);
  if (px < 0 || py < 0 || px >= R || py >= R) return null;
  for (let i = studio.state.objects.length - 1; i >= 0; i--) if (studio.state.objects[i].mask[py * R + px]) return i;
  return null;
}

// ------------------------------------------------------------------ drawing on the canvas

function tool() { return document.querySelector("input[name=tool]:checked").value; }

function at(event) {  // the pointer in model pixels (floats)
  const rect = view.getBoundingClientRect(), R = studio.state.resolution;
  return [(event.clientX - rect.left) * R / rect.width, (event.clientY - rect.top) * R / rect.height];
}

view.addEventListener("pointerdown", (event) => {
  if (!studio.state || event.button !== 0) return;
  const p = at(event), t = tool();
  view.setPointerCapture(event.pointerId);
  if (t === "select") { select(topmostAt(p)); return; }
  if (t === "polygon") { studio.polygon.push(p); draw(); return; }
  if (t === "move") {
    const hit = topmostAt(p);
    if (hit !== null && hit !== studio.selected) select(hit);
    if (studio.selected === null) { say("select an object to move first", "info"); return; }
  }
  studio.drag = {tool: t, start: p, last: p, now: p};
  if (t === "brush" || t === "erase") stamp(p, p, t === "brush" ? 1 : 0);
  draw();
});

view.addEventListener("pointermove", (event) => {
  const drag = studio.drag;
  if (!drag) return;
  drag.now = at(event);
  if (drag.tool === "brush" || drag.tool === "erase") stamp(drag.last, drag.now, drag.tool === "brush" ? 1 : 0);
  drag.last = drag.now;
  draw();
});

view.addEventListener("pointerup", (event) => {
  const drag = studio.drag;
  if (!drag) return;
  drag.now = at(event);
  studio.drag = null;
  if (drag.tool === "box") {
    const [x0, y0] = drag.start, [x1, y1] = drag.now;
    fill((x, y) => x >= Math.min(x0, x1) && x <= Math.max(x0, x1) && y >= Math.min(y0, y1) && y <= Math.max(y0, y1), 1);
  } else if (drag.tool === "move") {
    const dx = Math.round(drag.now[0] - drag.start[0]), dy = Math.round(drag.now[1] - drag.start[1]);
    if (dx || dy) edit({op: "move", index: studio.selected, dx, dy});
  }
  draw();
});

view.addEventListener("dblclick", closePolygon);

document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT" && event.target.type !== "radio") return;
  const key = event.key.toLowerCase();
  if ((event.ctrlKey || event.metaKey) && key === "z") { event.preventDefault(); edit({op: event.shiftKey ? "redo" : "undo"}); }
  else if ((event.ctrlKey || event.metaKey) && key === "y") { event.preventDefault(); edit({op: "redo"}); }
  else if (key === "enter" && studio.polygon.length) closePolygon();
  else if (key === "escape") { studio.polygon = []; draw(); }
});

for (const radio of document.querySelectorAll("input[name=tool]")) {
  radio.addEventListener("change", () => { $("hint").textContent = HINTS[tool()]; if (tool() !== "polygon") closePolygon(); });
}
$("hint").textContent = HINTS[tool()];

// ------------------------------------------------------------------ buttons

function seedValue(input) {  // null when empty: the server draws one
  const text = $(input).value.trim();
  return text === "" ? null : Number(text);
}

function selectedEdit(body) {
  if (studio.selected === null) { say("select an object first", "info"); return; }
  edit({index: studio.selected, ...body});
}

$("clear-mask").onclick = () => { studio.mask.fill(0); studio.polygon = []; draw(); };
$("bg-set").onclick = () => edit({op: "background", seed: seedValue("bg-seed")});
$("bg-reroll").onclick = () => edit({op: "background", seed: null});
$("clear-scene").onclick = () => { studio.selected = null; edit({op: "clear"}); };
$("add").onclick = () => {
  if (studio.polygon.length) closePolygon();
  const R = studio.state.resolution;
  const mask = {rle: {size: [R, R], counts: encodeRuns(studio.mask, R)}};
  act(async () => {
    const state = await api("POST", `/api/session/${studio.state.session}/edit`,
                            {op: "add", category: $("add-category").value, mask, seed: seedValue("add-seed")});
    studio.mask.fill(0);
    studio.selected = state.objects.length - 1;
    return state;
  });
};
$("reroll").onclick = () => selectedEdit({op: "reroll", seed: null});
$("set-category").onclick = () => selectedEdit({op: "category", category: $("sel-category").value});
for (const button of document.querySelectorAll(".nudge")) {
  button.onclick = () => selectedEdit({op: "move", dx: Number(button.dataset.dx), dy: Number(button.dataset.dy)});
}
$("shrink").onclick = () => selectedEdit({op: "move", scale: 0.8});
$("grow").onclick = () => selectedEdit({op: "move", scale: 1.25});
$("backward").onclick = () => { const i = studio.selected; studio.selected = i - 1; edit({op: "reorder", index: i, to: i - 1}); };
$("forward").onclick = () => { const i = studio.selected; studio.selected = i + 1; edit({op: "reorder", index: i, to: i + 1}); };
$("delete").onclick = () => { const i = studio.selected; studio.selected = null; edit({op: "remove", index: i}); };
$("undo").onclick = () => edit({op: "undo"});
$("redo").onclick = () => edit({op: "redo"});
$("open-layout").onchange = () => {
  const file = $("open-layout").files[0];
  $("open-layout").value = "";
  if (!file) return;
  if (file.size > 4 * 1024 * 1024) { say(`${file.name}: ${file.size} bytes; the studio opens layout files of at most 4 MiB`); return; }
  studio.selected = null;
  act(async () => api("POST", `/api/session/${studio.state.session}/layout?name=${encodeURIComponent(file.name)}`,
                      await file.arrayBuffer(), true));
};

// ------------------------------------------------------------------ start: this tab's scene, or a new one

act(async () => {
  const sid = sessionStorage.getItem(SESSION_KEY);
  if (sid) {
    try {
      return await api("GET", `/api/session/${sid}`);
    } catch (e) {
      if (e.status !== 404) throw e;
    }
  }
  return newSession();
});
