// The static Space: the exported ONNX model runs in the visitor's browser with onnxruntime-web
// (WebAssembly, one thread: Spaces send no COOP/COEP headers, so no SharedArrayBuffer). Nothing is
// uploaded. model.json (written by trashnet_hf/hub/static.py) names the model, its labels, its
// preprocessing, its calibrated "not sure" threshold, the bin hints, the examples, the input limits and
// the size of every file. preprocess.js computes the model input exactly as Python does.
//
// For tests: document.body.dataset.state is loading | ready | busy | done | error, and window.trashnet
// holds {ready, preprocess, resize, compositeOnWhite, classifyFile}; preprocess and resize work even when
// model.json or the model cannot load (onnxruntime-web is imported dynamically, after model.json).

import { compositeOnWhite, DEFAULT_PREPROCESSING, preprocess, resize } from './preprocess.js';

const DECODE_OPTIONS = { imageOrientation: 'from-image', colorSpaceConversion: 'none', premultiplyAlpha: 'none' };
const TOP_K = 3;

const $ = (id) => document.getElementById(id);
const setState = (state) => {
  document.body.dataset.state = state;
};

/** A bad input: its message is the one line the page shows. */
class InputError extends Error {}

let config = null; // model.json
let session = null;
let latest = 0; // the newest input; an older one still running renders nothing
let stream = null; // the camera's MediaStream while it is open
let previewUrl = null;

let resolveReady;
let rejectReady;
const ready = new Promise((resolve, reject) => {
  resolveReady = resolve;
  rejectReady = reject;
});
ready.catch(() => {}); // the page reports a load failure itself; awaiting callers still see it

window.trashnet = {
  ready,
  /** RGBA bytes -> Float32Array(3*S*S), CHW; cfg defaults to model.json's preprocessing. */
  preprocess: (rgba, width, height, cfg) =>
    preprocess(rgba, width, height, cfg ?? config?.preprocessing ?? DEFAULT_PREPROCESSING),
  /** Packed RGB bytes -> resized packed RGB bytes, as Pillow's Image.resize. */
  resize: (rgb, width, height, newWidth, newHeight, interpolation = 'bicubic') =>
    resize(rgb, width, height, newWidth, newHeight, interpolation),
  compositeOnWhite,
  /** Classify a File as the page does (and show it); resolves to the result, rejects with the error. */
  classifyFile: (file) => classify(file),
  get config() {
    return config;
  },
};

// ---------------------------------------------------------------------------------------------- text

const percent = (p) => (p > 0 && p < 0.001 ? '<0.1%' : `${(p * 100).toFixed(1)}%`);
const capitalize = (s) => s.charAt(0).toUpperCase() + s.slice(1);

function megabytes(bytes) {
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  return `${Math.max(1, Math.round(bytes / 1e3))} kB`;
}

/** Upload sizes in MiB, as the Gradio app's 20 MB limit: "20", "20.0" just over it, "25.3". */
function mebibytes(bytes) {
  const mib = bytes / 2 ** 20;
  return Number.isInteger(mib) ? String(mib) : mib.toFixed(1);
}

function setStatus(text) {
  $('status').textContent = text;
}

function showError(message) {
  const error = $('error');
  error.textContent = message;
  error.hidden = false;
}

/** Every new input starts from a clean slate: no error, no stale result. */
function clearOutput() {
  $('error').hidden = true;
  $('error').textContent = '';
  $('results').replaceChildren();
  $('hint').replaceChildren();
  $('notice').hidden = true;
  $('notice').textContent = '';
  $('foreign').hidden = true;
  $('foreign').replaceChildren();
  $('closest').hidden = true;
  $('results').classList.remove('muted');
  delete document.body.dataset.foreign;
  $('timing').textContent = '';
  const preview = $('preview');
  preview.hidden = true;
  preview.removeAttribute('src');
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = null;
}

// ------------------------------------------------------------------------------------------ loading

async function download(url, bytes, onProgress) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  // model.json's size is the uncompressed one; Content-Length may be the gzipped transfer.
  const total = bytes || Number(response.headers.get('content-length')) || 0;
  if (!response.body || !total) return new Uint8Array(await response.arrayBuffer());
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    onProgress(Math.min(received / total, 1));
  }
  const data = new Uint8Array(received);
  let offset = 0;
  for (const chunk of chunks) {
    data.set(chunk, offset);
    offset += chunk.length;
  }
  return data;
}

function renderExamples() {
  const box = $('examples');
  box.replaceChildren();
  for (const { label, file } of config.examples ?? []) {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'example';
    button.dataset.label = label;
    button.dataset.file = file;
    button.title = `Classify the example photo of ${label}`;
    const img = document.createElement('img');
    img.src = file;
    img.alt = `Example: ${label}`;
    img.loading = 'lazy';
    img.decoding = 'async';
    const caption = document.createElement('span');
    caption.textContent = label;
    button.append(img, caption);
    button.addEventListener('click', () => classifyExample(label, file));
    box.append(button);
  }
}

function renderFooter() {
  const threshold = config.low_confidence;
  $('threshold-note').textContent =
    `"Not sure" when the top score is under ${percent(threshold)}: the threshold this model stores, ` +
    'set at calibration on its validation photos.';
  let bytes = 0;
  let gzip = 0;
  for (const entry of Object.values(config.files ?? {})) {
    bytes += entry.bytes ?? 0;
    gzip += entry.gzip ?? 0;
  }
  if (bytes) $('weight').textContent = `Page weight: ${megabytes(bytes)}, ${megabytes(gzip)} gzipped`;
}

async function init() {
  setState('loading');
  try {
    const response = await fetch('model.json', { cache: 'no-cache' });
    if (!response.ok) throw new Error(`model.json: HTTP ${response.status}`);
    config = await response.json();
    if (config.format !== 'trashnet-hf static model 1') {
      throw new Error(`model.json: unknown format ${JSON.stringify(config.format)}`);
    }
    renderExamples();
    renderFooter();
    if (typeof WebAssembly !== 'object') throw new Error('this browser has no WebAssembly');
    const ort = await import('./ort/ort.wasm.min.mjs');
    ort.env.wasm.wasmPaths = new URL('ort/', document.baseURI).href;
    ort.env.wasm.numThreads = 1;
    const bytes = config.files?.[config.model]?.bytes ?? 0;
    const model = await download(config.model, bytes, (done) =>
      setStatus(`Loading the model (${megabytes(bytes)}): ${Math.round(done * 100)}%`),
    );
    setStatus('Starting the model…');
    session = await ort.InferenceSession.create(model, { executionProviders: ['wasm'] });
    window.trashnet.ort = ort;
    setStatus('Ready: add a photo, or click an example.');
    if (document.body.dataset.state === 'loading') setState('ready');
    resolveReady(session);
  } catch (err) {
    const message = `Could not load the model: ${err.message ?? err}`;
    setStatus('');
    showError(message);
    setState('error');
    rejectReady(new Error(message));
  }
}

// ------------------------------------------------------------------------------------------- input

function limits() {
  return { min_side: 32, max_file_bytes: 20 * 1024 * 1024, max_pixels: 89478485, max_aspect: 20, ...config?.limits };
}

async function decodeBitmap(file) {
  try {
    return await createImageBitmap(file, DECODE_OPTIONS);
  } catch (err) {
    // An older browser may reject an option value (a TypeError), not the image: retry with defaults.
    if (err instanceof TypeError) return await createImageBitmap(file);
    throw err;
  }
}

/** The file's RGBA pixels, EXIF-rotated, after the size checks; or an InputError. */
async function decode(file) {
  const name = file.name || 'the image';
  const limit = limits();
  if (file.size === 0) throw new InputError(`${name}: 0 bytes (an empty file), not an image`);
  if (file.size > limit.max_file_bytes) {
    throw new InputError(
      `${name}: ${mebibytes(file.size)} MB, over the ${mebibytes(limit.max_file_bytes)} MB limit for one photo`,
    );
  }
  let bitmap;
  try {
    bitmap = await decodeBitmap(file);
  } catch {
    throw new InputError(`${name}: not an image the browser can decode`);
  }
  try {
    const { width: w, height: h } = bitmap;
    if (w * h > limit.max_pixels) {
      throw new InputError(
        `${name}: ${w}x${h} pixels: too many pixels to decode safely (over ${limit.max_pixels.toLocaleString('en')})`,
      );
    }
    if (Math.min(w, h) < limit.min_side) {
      throw new InputError(
        `${name}: ${w}x${h} pixels is too small to recognise anything; send an image at least ` +
          `${limit.min_side} pixels on each side`,
      );
    }
    if (Math.max(w, h) > limit.max_aspect * Math.min(w, h)) {
      throw new InputError(
        `${name}: ${w}x${h} pixels is too thin to classify (sides over ${limit.max_aspect}:1); crop it ` +
          'around the object',
      );
    }
    const canvas =
      typeof OffscreenCanvas === 'function'
        ? new OffscreenCanvas(w, h)
        : Object.assign(document.createElement('canvas'), { width: w, height: h });
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    if (!ctx) throw new InputError(`${name}: ${w}x${h} pixels is too large for this browser to read`);
    ctx.drawImage(bitmap, 0, 0);
    let data;
    try {
      data = ctx.getImageData(0, 0, w, h).data;
    } catch {
      throw new InputError(`${name}: ${w}x${h} pixels is too large for this browser to read`);
    }
    return { rgba: data, width: w, height: h };
  } finally {
    bitmap.close();
  }
}

function softmax(logits) {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  const exps = Array.from(logits, (v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / sum);
}

async function run(file) {
  const t0 = performance.now();
  const { rgba, width, height } = await decode(file);
  const t1 = performance.now();
  await ready.catch((err) => {
    throw new InputError(err.message);
  });
  const cfg = config.preprocessing;
  const size = cfg.image_size;
  const input = preprocess(rgba, width, height, cfg);
  const t2 = performance.now();
  const ort = window.trashnet.ort;
  const tensor = new ort.Tensor('float32', input, [1, 3, size, size]);
  const outputs = await session.run({ [config.input]: tensor });
  const logits = Array.from(outputs[config.output].data);
  // The out-of-distribution score (the graph's second output, when the model carries one): over the
  // model's threshold, the photo is unlike every training photo and no label is shown as the answer.
  const ood = config.ood && outputs[config.ood.output] ? outputs[config.ood.output].data[0] : null;
  const t3 = performance.now();
  const probs = softmax(logits);
  const ranked = config.labels.map((label, i) => ({ label, score: probs[i] })).sort((a, b) => b.score - a.score);
  return {
    name: file.name,
    width,
    height,
    label: ranked[0].label,
    score: ranked[0].score,
    top: ranked.slice(0, TOP_K),
    scores: Object.fromEntries(config.labels.map((label, i) => [label, probs[i]])),
    logits,
    lowConfidence: ranked[0].score < config.low_confidence,
    oodScore: ood,
    foreign: ood !== null && ood > config.ood.threshold,
    timing: { decode_ms: t1 - t0, preprocess_ms: t2 - t1, inference_ms: t3 - t2 },
  };
}

function render(result, file) {
  renderPreview(file);
  const results = $('results');
  for (const { label, score } of result.top) {
    const row = document.createElement('li');
    row.className = 'row';
    row.dataset.label = label;
    row.dataset.score = String(score);
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = capitalize(label);
    const pct = document.createElement('span');
    pct.className = 'pct';
    pct.textContent = percent(score);
    const bar = document.createElement('span');
    bar.className = 'bar';
    bar.setAttribute('aria-hidden', 'true');
    const fill = document.createElement('span');
    fill.style.width = `${(score * 100).toFixed(2)}%`;
    bar.append(fill);
    row.append(name, pct, bar);
    results.append(row);
  }
  document.body.dataset.foreign = String(result.foreign);
  if (result.foreign) {
    const strong = document.createElement('strong');
    strong.textContent = config.foreign?.message ?? 'This does not look like one piece of waste.';
    $('foreign').replaceChildren(strong, ' ', config.foreign?.advice ?? '');
    $('foreign').hidden = false;
    $('closest').hidden = false;
    results.classList.add('muted');
    renderTiming(result);
    return;
  }
  const strong = document.createElement('strong');
  const hint = config.bin_hints?.[result.label];
  strong.textContent = hint ? 'Bin: ' : capitalize(result.label);
  $('hint').replaceChildren(strong, hint ?? '');
  if (result.lowConfidence) {
    const labels = config.labels;
    const strong = document.createElement('strong');
    strong.textContent = 'Not sure:';
    $('notice').replaceChildren(
      strong,
      ` the top score, ${percent(result.score)}, is under ${percent(config.low_confidence)}, ` +
        `this model's own calibrated threshold. Is this one of the ${labels.length} kinds ` +
        `(${labels.join(', ')})? A closer photo of one object on a plain background helps.`,
    );
    $('notice').hidden = false;
  }
  renderTiming(result);
}

function renderTiming(result) {
  const { decode_ms, preprocess_ms, inference_ms } = result.timing;
  $('timing').textContent =
    `Model time: preprocessing ${preprocess_ms.toFixed(0)} ms, inference ${inference_ms.toFixed(0)} ms ` +
    `(WebAssembly, on this device; decoding the ${result.width}x${result.height} photo ${decode_ms.toFixed(0)} ms)`;
}

function renderPreview(file) {
  previewUrl = URL.createObjectURL(file);
  const preview = $('preview');
  preview.src = previewUrl;
  preview.alt = `Your photo: ${file.name}`;
  preview.hidden = false;
  setStatus('');
}

/** On a phone the answer is below the inputs: bring it into view when a new input arrives. */
function showAnswer() {
  const output = document.querySelector('.output');
  if (output.getBoundingClientRect().top > window.innerHeight * 0.6) {
    const smooth = !window.matchMedia('(prefers-reduced-motion: reduce)').matches;
    output.scrollIntoView({ behavior: smooth ? 'smooth' : 'auto', block: 'start' });
  }
}

async function classify(file) {
  const token = ++latest;
  clearOutput();
  setState('busy');
  showAnswer();
  setStatus(`Classifying ${file.name || 'the photo'}…`);
  try {
    const result = await run(file);
    if (token === latest) {
      render(result, file);
      setState('done');
    }
    return result;
  } catch (err) {
    if (token === latest) {
      const name = file.name || 'the image';
      showError(err instanceof InputError ? err.message : `${name}: ${err.message ?? err}`);
      setStatus(session ? 'Ready: add another photo.' : '');
      setState('error');
    }
    throw err;
  }
}

function classifyQuietly(file) {
  classify(file).catch(() => {}); // already shown on the page
}

async function classifyExample(label, url) {
  try {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const blob = await response.blob();
    classifyQuietly(new File([blob], url.split('/').pop() || `${label}.jpg`, { type: blob.type }));
  } catch (err) {
    clearOutput();
    showError(`Example ${label}: could not load it (${err.message})`);
    setState('error');
  }
}

// ------------------------------------------------------------------------------------------ camera

function stopCamera() {
  if (stream) for (const track of stream.getTracks()) track.stop();
  stream = null;
  $('video').srcObject = null;
  $('camera-panel').hidden = true;
}

async function openCamera() {
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: { ideal: 'environment' } }, audio: false });
    const video = $('video');
    video.srcObject = stream;
    $('camera-panel').hidden = false;
    await video.play();
    $('snap').focus();
  } catch (err) {
    stopCamera();
    clearOutput();
    showError(`Camera: ${err.message || err.name || 'not available'}`);
    setState('error');
  }
}

function takePhoto() {
  const video = $('video');
  const w = video.videoWidth;
  const h = video.videoHeight;
  if (!w || !h) return;
  const canvas = document.createElement('canvas');
  canvas.width = w;
  canvas.height = h;
  canvas.getContext('2d').drawImage(video, 0, 0, w, h);
  stopCamera();
  // PNG: lossless, so the model sees the frame as captured.
  canvas.toBlob((blob) => {
    if (blob) classifyQuietly(new File([blob], 'camera photo.png', { type: 'image/png' }));
  }, 'image/png');
}

// -------------------------------------------------------------------------------------------- wiring

function firstFile(list) {
  return list && list.length ? list[0] : null;
}

function wire() {
  const input = $('file');
  input.addEventListener('change', () => {
    const file = firstFile(input.files);
    if (file) classifyQuietly(file);
    input.value = ''; // picking the same file again is a new input
  });

  const zone = $('dropzone');
  let depth = 0;
  window.addEventListener('dragenter', (event) => {
    event.preventDefault();
    depth += 1;
    zone.classList.add('dragging');
  });
  window.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove('dragging');
  });
  window.addEventListener('dragover', (event) => event.preventDefault());
  window.addEventListener('drop', (event) => {
    event.preventDefault(); // never navigate away to the dropped file
    depth = 0;
    zone.classList.remove('dragging');
    const file = firstFile(event.dataTransfer?.files);
    if (file) {
      classifyQuietly(file);
    } else {
      clearOutput();
      showError('Dropped something that is not a file: drop a photo file (or save the image first).');
      setState('error');
    }
  });

  document.addEventListener('paste', (event) => {
    const data = event.clipboardData;
    let file = firstFile(data?.files);
    if (!file) {
      for (const item of data?.items ?? []) {
        if (item.kind === 'file') {
          file = item.getAsFile();
          break;
        }
      }
    }
    if (!file) return; // pasted text: not for this page
    event.preventDefault();
    classifyQuietly(file.name ? file : new File([file], 'pasted image', { type: file.type }));
  });

  const camera = $('camera');
  if (navigator.mediaDevices?.getUserMedia) {
    camera.addEventListener('click', openCamera);
    $('snap').addEventListener('click', takePhoto);
    $('camera-close').addEventListener('click', stopCamera);
  } else {
    camera.hidden = true;
  }
}

wire();
init();
