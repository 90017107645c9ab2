// aiaa-server's web annotator: NiiVue (vendored, ../static/niivue) showing a local or datastore image, an AIAA
// session so clicks never upload the image again, automatic segmentation, DeepGrow clicks, DExtr3D extreme
// points, undo, download, save to the datastore. Every URL is relative to the page (<prefix>/ui/), so the page
// works behind a proxy prefix (--root_path) and over HTTPS. Points go to the server as 0-based voxel indices
// [i, j, k] of the image as stored (NIfTI/NRRD order), from NiiVue's world coordinates through the image's affine.
"use strict";

const API_ROOT = new URL("..", window.location.href);
const api = (path) => new URL(path, API_ROOT).toString();
const $ = (id) => document.getElementById(id);
const PEN = { fg: 2, bg: 1, extreme: 3 };  // NiiVue's drawing colours: 1 red, 2 green, 3 blue

const state = {
  name: null, bytes: null, session: null, datastoreId: null,
  mask: null, history: [], fg: [], bg: [], extreme: [], applied: { fg: [], bg: [] }, busy: false, again: false,
  requests: 0,
};
const nv = new niivue.Niivue({ backColor: [0.07, 0.07, 0.07, 1], show3Dcrosshair: true, dragAndDropEnabled: false });
window.aiaaUI = { nv, state, voxelToCanvas, ready: start() };

async function start() {
  await nv.attachToCanvas($("viewer"));
  nv.opts.dragMode = nv.dragModes.pan;  // right drag pans: right click is the background click
  nv.opts.multiplanarShowRender = 1;  // three planes and the 3D render
  nv.setSliceType(nv.sliceTypeMultiplanar);
  nv.setCrosshairColor([0.3, 0.7, 1, 1]);  // not red: red is the label
  wireControls();
  await guarded("models", loadModels);
  await guarded("datastore", refreshDatastore);
  if (!$("error").hidden) return;
  status("open an image");
}

// --- talking to the server --------------------------------------------------------------------------------------

async function request(method, path, form) {
  const response = await fetch(api(path), { method, body: form });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
    } catch (ignored) { /* not JSON: keep the status text */ }
    const error = new Error(`${response.status} ${detail}`);
    error.status = response.status;
    throw error;
  }
  return response;
}

function formWith(params, files = {}) {
  const form = new FormData();
  form.append("params", JSON.stringify(params));
  for (const [part, [blob, name]] of Object.entries(files)) form.append(part, blob, name);
  return form;
}

async function loadModels() {
  const models = await (await request("GET", "v1/models")).json();
  const fill = (select, types) => {
    select.replaceChildren();
    for (const model of models.filter((m) => types.includes(m.type))) {
      const labels = (model.labels || []).join(", ");
      select.append(new Option(labels ? `${model.name} (${labels})` : model.name, model.name));
    }
    if (!select.options.length) select.append(new Option("(none served)", ""));
  };
  fill($("segModel"), ["segmentation"]);
  fill($("growModel"), ["deepgrow"]);
  fill($("dextrModel"), ["annotation", "dextr3d"]);
  const classical = [...$("growModel").options].find((o) => o.value === "classical_region_grow");
  if (classical) $("growModel").value = classical.value;
}

async function refreshDatastore() {
  const all = await (await request("GET", "datastore/?output=all")).json();
  const select = $("datastoreImages");
  const count = Object.keys(all.objects).length;
  select.replaceChildren(new Option(count === 1 ? "(1 image)" : `(${count} images)`, ""));
  for (const [id, entry] of Object.entries(all.objects)) {
    const labelled = entry.labels && entry.labels.final ? " ✓" : "";
    const option = new Option(id + labelled, id);
    option.dataset.ext = entry.image.ext || ".nii.gz";
    select.append(option);
  }
}

async function createSession() {
  if (state.session) request("DELETE", `session/${state.session}`).catch(() => {});
  state.session = null;
  const form = formWith({}, { image: [new Blob([state.bytes]), state.name] });
  state.session = (await (await request("PUT", "session/", form)).json()).session_id;
}

async function infer(endpoint, model, params) {
  if (!model) throw new Error(`no ${endpoint} model is served`);
  const run = () => request("POST", `v1/${endpoint}?model=${encodeURIComponent(model)}` +
    `&session_id=${encodeURIComponent(state.session)}&output=image`,
  formWith({ ...params, result_extension: ".nii.gz" }));
  let response;
  try {
    response = await run();
  } catch (error) {
    if (error.status !== 440) throw error;
    status("session expired: uploading the image again");  // 440: the server dropped it
    await createSession();
    response = await run();
  }
  state.requests += 1;
  return await response.arrayBuffer();
}

// --- image and label --------------------------------------------------------------------------------------------

async function openImage(bytes, name, datastoreId) {
  status(`loading ${name}…`);
  while (nv.volumes.length) nv.removeVolume(nv.volumes[nv.volumes.length - 1]);
  Object.assign(state, { name, bytes, datastoreId, mask: null, history: [], fg: [], bg: [], extreme: [],
    applied: { fg: [], bg: [] } });
  await nv.loadFromArrayBuffer(bytes, name);
  nv.createEmptyDrawing();
  nv.setDrawOpacity(1);
  const volume = nv.volumes[0];
  const ct = volume.global_min < -500;  // Hounsfield units: start with a soft-tissue window
  $("window").value = ct ? 400 : round(volume.cal_max - volume.cal_min);
  $("level").value = ct ? 40 : round((volume.cal_max + volume.cal_min) / 2);
  applyWindow();
  $("imageId").value = datastoreId || name.replace(/\.(nii\.gz|nii|nrrd|nhdr|gz)$/i, "").replace(/[^\w.-]/g, "_");
  const dims = volume.hdr.dims.slice(1, 4).join("×");
  $("imageInfo").textContent = `${name}: ${dims} voxels`;
  status("uploading the image once (AIAA session)…");
  await createSession();
  updateControls();
  status(`ready: session ${state.session.slice(0, 8)}…`);
}

const VOLUME = /\.(nii|nii\.gz|nrrd)$/i;

async function openDicom(files) {
  // NiiVue reads no DICOM: the server assembles the series (its own series reader) into the datastore, under the
  // series' id, and the page opens the volume it stored; labels saved later belong to that image.
  status(`uploading ${files.length} DICOM file(s) to the datastore…`);
  const form = formWith({ client_id: "web-annotator" });
  files.forEach((file, index) => form.append(files.length === 1 ? "file" : `image${index}`, file, file.name));
  const id = (await (await request("PUT", "datastore/", form)).json()).image;
  const volume = await request("GET", `datastore/image?image=${encodeURIComponent(id)}`);
  await openImage(await volume.arrayBuffer(), `${id}.nii.gz`, id);
  refreshDatastore().catch(() => {});
}

async function showMask(bytes, remember = true) {
  if (remember) state.history.push({ mask: state.mask, ...state.applied });
  const old = nv.volumes[1];
  state.mask = bytes;
  if (old && !bytes) {  // emptied, not removed: NiiVue's 3D render keeps showing a removed last overlay
    old.img.fill(0);
    nv.updateGLVolume();
  } else if (bytes) {
    if (old) nv.removeVolume(old);
    const label = await niivue.NVImage.new(bytes.slice(0), "label.nii.gz", "red", Number($("opacity").value),
      null, 0.5, 1, true);
    nv.addVolume(label);
  }
  document.body.dataset.masks = String(state.history.length);
  updateControls();
}

async function undo() {
  if (state.busy || !state.history.length) return;
  setBusy(true);  // one at a time: a second undo waits for the first overlay
  try {
    const previous = state.history.pop();
    Object.assign(state, { fg: [...previous.fg], bg: [...previous.bg], applied: { fg: previous.fg, bg: previous.bg } });
    await showMask(previous.mask, false);
    drawMarkers();
    status(previous.mask ? "previous label restored" : "label removed");
  } finally {
    setBusy(false);
  }
}

function download() {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([state.mask], { type: "application/gzip" }));
  link.download = `${$("imageId").value || "image"}_label.nii.gz`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60000);
}

async function save() {
  const id = $("imageId").value.trim();
  if (!id) throw new Error("give the image an id in the datastore");
  if (state.datastoreId !== id) {
    const exists = await fetch(api(`datastore/image?image=${encodeURIComponent(id)}`), { method: "HEAD" });
    if (exists.ok) throw new Error(`the datastore already holds an image "${id}": choose another id`);
    status(`adding the image to the datastore as ${id}…`);
    await request("PUT", `datastore/?image=${encodeURIComponent(id)}`,
      formWith({ client_id: "web-annotator" }, { file: [new Blob([state.bytes]), state.name] }));
    state.datastoreId = id;
  }
  await request("PUT", `datastore/label?image=${encodeURIComponent(id)}&tag=final`,
    formWith({ client_id: "web-annotator" }, { label: [new Blob([state.mask]), "label.nii.gz"] }));
  status(`label saved to the datastore: ${id} (final)`);
  refreshDatastore().catch(() => {});
}

// --- clicks -----------------------------------------------------------------------------------------------------

function invert4(m) {  // Gauss-Jordan on a 4×4 row-major matrix (NIfTI's affine)
  const a = m.map((row, i) => [...row, ...[0, 1, 2, 3].map((j) => (i === j ? 1 : 0))]);
  for (let c = 0; c < 4; c++) {
    let p = c;
    for (let r = c + 1; r < 4; r++) if (Math.abs(a[r][c]) > Math.abs(a[p][c])) p = r;
    [a[c], a[p]] = [a[p], a[c]];
    const d = a[c][c];
    for (let j = 0; j < 8; j++) a[c][j] /= d;
    for (let r = 0; r < 4; r++) {
      if (r === c) continue;
      const f = a[r][c];
      for (let j = 0; j < 8; j++) a[r][j] -= f * a[c][j];
    }
  }
  return a.map((row) => row.slice(4));
}

const apply4 = (m, p) => [0, 1, 2].map((r) => m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3]);

function voxelOfFrac(frac) {  // [i, j, k] of the image as stored, or null outside it
  const volume = nv.volumes[0];
  const ijk = apply4(invert4(volume.hdr.affine), nv.frac2mm(frac)).map(Math.round);
  const inside = ijk.every((v, axis) => v >= 0 && v < volume.hdr.dims[axis + 1]);
  return inside ? ijk : null;
}

function voxelToCanvas(ijk) {  // for tests and scripts: move the crosshair to a voxel, answer its CSS pixel
  const frac = nv.mm2frac(apply4(nv.volumes[0].hdr.affine, ijk));
  nv.scene.crosshairPos = frac;
  nv.drawScene();
  const pos = nv.frac2canvasPos(frac);
  return [pos[0] / nv.uiData.dpr, pos[1] / nv.uiData.dpr];
}

function drawMarkers() {
  if (!nv.back) return;
  nv.createEmptyDrawing();
  const volume = nv.volumes[0];
  const mark = (ijk, pen) => {
    const ras = volume.mm2vox(apply4(volume.hdr.affine, ijk));
    for (let dx = -1; dx <= 1; dx++) {
      for (let dy = -1; dy <= 1; dy++) {
        for (let dz = -1; dz <= 1; dz++) nv.drawPt(ras[0] + dx, ras[1] + dy, ras[2] + dz, pen);
      }
    }
  };
  state.fg.forEach((p) => mark(p, PEN.fg));
  state.bg.forEach((p) => mark(p, PEN.bg));
  state.extreme.forEach((p) => mark(p, PEN.extreme));
  nv.refreshDrawing(true);
  updateControls();
}

let pressed = null;

function onPointerDown(event) {
  pressed = { x: event.clientX, y: event.clientY };
}

function onPointerUp(event) {
  const start = pressed;
  pressed = null;
  if (!start || Math.hypot(event.clientX - start.x, event.clientY - start.y) > 4) return;  // a drag
  const mode = $("mode").value;
  if (mode === "navigate" || !state.session) return;
  const rect = $("viewer").getBoundingClientRect();
  const dpr = nv.uiData.dpr || 1;
  const frac = nv.canvasPos2frac([(event.clientX - rect.left) * dpr, (event.clientY - rect.top) * dpr]);
  if (frac[0] < 0) return;  // the 3D render or the margin
  const ijk = voxelOfFrac(frac);
  if (!ijk) return;
  if (mode === "extreme") {
    state.extreme.push(ijk);
    drawMarkers();
    return;
  }
  const background = event.button === 2 || event.shiftKey;
  (background ? state.bg : state.fg).push(ijk);
  drawMarkers();
  state.current = ijk;
  guarded("deepgrow", deepgrow);
}

async function deepgrow() {
  if (state.busy) {
    state.again = true;  // clicks made meanwhile go with the next call
    return;
  }
  if (!state.fg.length) {
    status("add a foreground click first (left click)");
    return;
  }
  setBusy(true);
  try {
    do {
      state.again = false;
      const clicks = { foreground: [...state.fg], background: [...state.bg], current_point: [state.current] };
      status(`DeepGrow: ${clicks.foreground.length} foreground, ${clicks.background.length} background…`);
      const mask = await infer("deepgrow", $("growModel").value, clicks);
      await showMask(mask);  // undo goes back to the mask and the clicks before these
      state.applied = { fg: clicks.foreground, bg: clicks.background };
      status("DeepGrow done");
    } while (state.again);
  } finally {
    setBusy(false);
  }
}

async function segment() {
  setBusy(true);
  try {
    status("segmenting…");
    await showMask(await infer("segmentation", $("segModel").value, {}));
    status("segmentation done");
  } finally {
    setBusy(false);
  }
}

async function dextr() {
  setBusy(true);
  try {
    status(`DExtr3D from ${state.extreme.length} points…`);
    await showMask(await infer("dextr3d", $("dextrModel").value, { points: state.extreme }));
    status("DExtr3D done");
  } finally {
    setBusy(false);
  }
}

// --- controls ---------------------------------------------------------------------------------------------------

function status(text) {
  $("status").textContent = text;
}

function round(value) {
  return Math.round(value * 100) / 100;
}

async function guarded(what, action) {
  try {
    $("error").hidden = true;
    await action();
  } catch (error) {
    $("error").textContent = `${what} failed: ${error.message}`;
    $("error").hidden = false;
    status(`${what} failed`);
    setBusy(false);
  }
}

function setBusy(busy) {
  state.busy = busy;
  document.body.dataset.state = busy ? "busy" : "idle";
  updateControls();
}

function updateControls() {
  const ready = Boolean(state.session) && !state.busy;
  $("segment").disabled = !ready || !$("segModel").value;
  $("dextr").disabled = !ready || state.extreme.length < 6 || !$("dextrModel").value;
  $("undo").disabled = state.busy || !state.history.length;
  $("download").disabled = !state.mask;
  $("save").disabled = !state.mask || state.busy;
  $("clickInfo").textContent =
    `${state.fg.length} foreground, ${state.bg.length} background, ${state.extreme.length} extreme points`;
}

function applyWindow() {
  const volume = nv.volumes[0];
  const width = Number($("window").value);
  const level = Number($("level").value);
  if (!volume || !(width > 0) || !Number.isFinite(level)) return;
  volume.cal_min = level - width / 2;
  volume.cal_max = level + width / 2;
  nv.updateGLVolume();
}

function wireControls() {
  const canvas = $("viewer");
  canvas.addEventListener("pointerdown", onPointerDown);
  canvas.addEventListener("pointerup", onPointerUp);
  canvas.addEventListener("contextmenu", (event) => event.preventDefault());
  window.addEventListener("pagehide", () => {  // the page goes: its session goes too (else it expires)
    if (state.session) fetch(api(`session/${state.session}`), { method: "DELETE", keepalive: true }).catch(() => {});
  });
  $("file").addEventListener("change", () => guarded("opening the file", async () => {
    const files = [...$("file").files];
    if (files.length === 1 && VOLUME.test(files[0].name)) {
      await openImage(await files[0].arrayBuffer(), files[0].name, null);
    } else if (files.length) {
      await openDicom(files);
    }
  }));
  $("datastoreRefresh").addEventListener("click", () => guarded("datastore", refreshDatastore));
  $("datastoreOpen").addEventListener("click", () => guarded("opening the datastore image", async () => {
    const option = $("datastoreImages").selectedOptions[0];
    if (!option || !option.value) return;
    const response = await request("GET", `datastore/image?image=${encodeURIComponent(option.value)}`);
    await openImage(await response.arrayBuffer(), option.value + option.dataset.ext, option.value);
  }));
  $("segment").addEventListener("click", () => guarded("segmentation", segment));
  $("dextr").addEventListener("click", () => guarded("DExtr3D", dextr));
  $("undo").addEventListener("click", () => guarded("undo", undo));
  $("download").addEventListener("click", download);
  $("save").addEventListener("click", () => guarded("saving", async () => {
    setBusy(true);
    try {
      await save();
    } finally {
      setBusy(false);
    }
  }));
  $("clearClicks").addEventListener("click", () => {
    Object.assign(state, { fg: [], bg: [], extreme: [] });
    drawMarkers();
  });
  $("mode").addEventListener("change", updateControls);
  $("opacity").addEventListener("input", () => {
    if (nv.volumes[1]) nv.setOpacity(1, Number($("opacity").value));
  });
  $("window").addEventListener("change", applyWindow);
  $("level").addEventListener("change", applyWindow);
  $("layout").addEventListener("change", () => {
    const value = $("layout").value;
    nv.opts.multiplanarShowRender = value === "multi" ? 1 : 2;
    nv.setSliceType(value === "multi" ? nv.sliceTypeMultiplanar : Number(value));
  });
  setBusy(false);
}
