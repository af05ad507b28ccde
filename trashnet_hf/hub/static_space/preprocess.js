// The model's input, computed in the browser bit for bit as Python computes it: timm's eval transform on
// a PIL RGB image (torchvision Resize of the shorter side with Pillow's resampling, CenterCrop, ToTensor,
// Normalize), after decoding.py's alpha composite over white. tests/test_static_preprocess.py checks
// every step against Pillow and torch, byte for byte and float for float.
//
// resize() is a port of Pillow 12.3's src/libImaging/Resample.c (precompute_coeffs,
// normalize_coeffs_8bpc, ImagingResampleHorizontal_8bpc / Vertical_8bpc, ImagingResampleInner) for
// 8-bit RGB. All the filter maths is in doubles, as in C; the accumulators are integers that stay far
// below 2^53, so JS numbers hold them exactly, and `>>` truncates to int32 as C's int does.

/** Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2. */
const PRECISION_BITS = 22;
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);

/** Pillow's filters: the function and its support. Only the two timm configurations use. */
export const FILTERS = {
  bicubic: {
    support: 2.0,
    // Keys' cubic convolution with a = -0.5, in Pillow's operation order.
    fn(x) {
      const a = -0.5;
      if (x < 0.0) x = -x;
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    },
  },
  bilinear: {
    support: 1.0,
    fn(x) {
      if (x < 0.0) x = -x;
      if (x < 1.0) return 1.0 - x;
      return 0.0;
    },
  },
};

function filterFor(interpolation) {
  const filter = FILTERS[interpolation];
  if (!filter) throw new Error(`unsupported interpolation ${JSON.stringify(interpolation)}`);
  return filter;
}

/**
 * Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis (the box is the whole axis).
 * Returns {ksize, bounds: Int32Array [xmin, count] per output pixel, kk: Int32Array fixed-point weights}.
 */
export function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize; // (double)(in1 - in0) / outSize, in0 = 0, in1 = inSize (exact float)
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let ww = 0.0;
    // (int) in C truncates toward zero, then the clamps.
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    for (let x = 0; x < xmax; x++) {
      const w = filter.fn((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      if (ww !== 0.0) k[x] /= ww;
    }
    // normalize_coeffs_8bpc: round half away from zero into 22-bit fixed point (the rest stays 0).
    const base = xx * ksize;
    for (let x = 0; x < xmax; x++) {
      kk[base + x] = k[x] < 0 ? Math.trunc(-0.5 + k[x] * ONE) : Math.trunc(0.5 + k[x] * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

/** Pillow's clip8: the accumulator's integer part (an int32 arithmetic shift), clamped to 0..255. */
function clip8(ss) {
  const v = ss >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** ImagingResampleHorizontal_8bpc on rows [offset, offset + rows) of a packed RGB image. */
function horizontal(src, inW, outW, rows, offset, coeffs) {
  const { ksize, bounds, kk } = coeffs;
  const out = new Uint8Array(outW * rows * 3);
  for (let yy = 0; yy < rows; yy++) {
    const rowIn = (yy + offset) * inW * 3;
    const rowOut = yy * outW * 3;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[xx * 2];
      const xmax = bounds[xx * 2 + 1];
      const base = xx * ksize;
      let ss0 = HALF;
      let ss1 = HALF;
      let ss2 = HALF;
      for (let x = 0; x < xmax; x++) {
        const w = kk[base + x];
        const p = rowIn + (x + xmin) * 3;
        ss0 += src[p] * w;
        ss1 += src[p + 1] * w;
        ss2 += src[p + 2] * w;
      }
      const q = rowOut + xx * 3;
      out[q] = clip8(ss0);
      out[q + 1] = clip8(ss1);
      out[q + 2] = clip8(ss2);
    }
  }
  return out;
}

/** ImagingResampleVertical_8bpc: bounds are rows of `src` (already shifted when a horizontal pass ran). */
function vertical(src, width, outH, coeffs, shift) {
  const { ksize, bounds, kk } = coeffs;
  const out = new Uint8Array(width * outH * 3);
  const stride = width * 3;
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2] - shift;
    const ymax = bounds[yy * 2 + 1];
    const base = yy * ksize;
    const rowOut = yy * stride;
    for (let xx = 0; xx < width; xx++) {
      let ss0 = HALF;
      let ss1 = HALF;
      let ss2 = HALF;
      let p = ymin * stride + xx * 3;
      for (let y = 0; y < ymax; y++, p += stride) {
        const w = kk[base + y];
        ss0 += src[p] * w;
        ss1 += src[p + 1] * w;
        ss2 += src[p + 2] * w;
      }
      const q = rowOut + xx * 3;
      out[q] = clip8(ss0);
      out[q + 1] = clip8(ss1);
      out[q + 2] = clip8(ss2);
    }
  }
  return out;
}

/**
 * Pillow's Image.resize((newW, newH), BICUBIC | BILINEAR) of packed 8-bit RGB (w*h*3 bytes, row-major).
 * As ImagingResampleInner: the vertical coefficients first, then the horizontal pass over only the rows
 * the vertical pass reads, then the vertical pass; an axis that keeps its size is not resampled.
 */
export function resize(rgb, w, h, newW, newH, interpolation = 'bicubic') {
  if (rgb.length !== w * h * 3) throw new Error(`expected ${w * h * 3} RGB bytes, got ${rgb.length}`);
  if (!(newW >= 1 && newH >= 1)) throw new Error(`bad target size ${newW}x${newH}`);
  const filter = filterFor(interpolation);
  const needH = newW !== w;
  const needV = newH !== h;
  if (!needH && !needV) return Uint8Array.from(rgb);
  const vert = coefficients(h, newH, filter);
  const yFirst = vert.bounds[0];
  const yLast = vert.bounds[newH * 2 - 2] + vert.bounds[newH * 2 - 1];
  let img = rgb;
  let shift = 0;
  if (needH) {
    img = horizontal(rgb, w, newW, yLast - yFirst, yFirst, coefficients(w, newW, filter));
    shift = yFirst;
  }
  if (needV) img = vertical(img, newW, newH, vert, shift);
  return img;
}

/**
 * Pillow's Image.alpha_composite(white, rgba).convert('RGB') (AlphaComposite.c with an opaque white
 * destination: outa = 255 * 255, so coef1 = a * 128 exactly) on RGBA bytes; packed RGB out.
 * The browser's 2D canvas stores premultiplied alpha, so getImageData may already have lost a little
 * precision on semi-transparent pixels (PNG/WebP with alpha); opaque pixels (every JPEG) are exact.
 */
export function compositeOnWhite(rgba, w, h) {
  const n = w * h;
  if (rgba.length !== n * 4) throw new Error(`expected ${n * 4} RGBA bytes, got ${rgba.length}`);
  const out = new Uint8Array(n * 3);
  for (let i = 0, p = 0, q = 0; i < n; i++, p += 4, q += 3) {
    const a = rgba[p + 3];
    if (a === 255) {
      out[q] = rgba[p];
      out[q + 1] = rgba[p + 1];
      out[q + 2] = rgba[p + 2];
    } else if (a === 0) {
      out[q] = out[q + 1] = out[q + 2] = 255;
    } else {
      const coef1 = a * 128;
      const coef2 = 255 * 128 - coef1;
      for (let c = 0; c < 3; c++) {
        const tmp = rgba[p + c] * coef1 + 255 * coef2 + (0x80 << 7);
        out[q + c] = (((tmp >> 8) + tmp) >> 8) >> 7;
      }
    }
  }
  return out;
}

/** Python's round() on x.0 / x.5: half to even (CenterCrop's int(round((h - S) / 2))). */
function roundHalfEven(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * The size torchvision's Resize(floor(image_size / crop_pct)) gives a w x h image: the shorter side to
 * that size, the longer to int(short_new * long / short) (doubles, in that order, truncated).
 */
export function resizedSize(w, h, imageSize, cropPct) {
  const newShort = Math.floor(imageSize / cropPct);
  const [short, long] = w <= h ? [w, h] : [h, w];
  const newLong = Math.trunc((newShort * long) / short);
  return w <= h ? [newShort, newLong] : [newLong, newShort];
}

/** The defaults of trashnet_hf.core.preprocessing.Preprocessing (timm's ImageNet mean and std). */
export const DEFAULT_PREPROCESSING = Object.freeze({
  image_size: 224,
  crop_pct: 0.875,
  interpolation: 'bicubic',
  mean: [0.485, 0.456, 0.406],
  std: [0.229, 0.224, 0.225],
});

/**
 * RGBA bytes (w*h*4, e.g. ImageData.data) to the model input: Float32Array of 3 * S * S, CHW, with
 * S = cfg.image_size. Composite on white, Resize, CenterCrop, ToTensor (x / 255 in float32), Normalize
 * ((x - mean) / std in float32). Each float32 operation is one IEEE operation on float32 values, which a
 * double operation followed by Math.fround reproduces exactly for + - * / (53 >= 2 * 24 + 2 bits), so the
 * 256 values per channel are exactly torch's; they are tabulated.
 */
export function preprocess(rgba, w, h, cfg = DEFAULT_PREPROCESSING) {
  const size = cfg.image_size;
  const rgb = compositeOnWhite(rgba, w, h);
  const [rw, rh] = resizedSize(w, h, size, cfg.crop_pct);
  const resized = rw === w && rh === h ? rgb : resize(rgb, w, h, rw, rh, cfg.interpolation);
  if (rw < size || rh < size) throw new Error(`resized ${rw}x${rh} is smaller than the ${size} px crop`);
  const top = roundHalfEven((rh - size) / 2);
  const left = roundHalfEven((rw - size) / 2);
  const table = new Float32Array(3 * 256);
  for (let c = 0; c < 3; c++) {
    const mean = Math.fround(cfg.mean[c]);
    const std = Math.fround(cfg.std[c]);
    for (let v = 0; v < 256; v++) {
      const x = Math.fround(v / 255);
      table[c * 256 + v] = Math.fround(Math.fround(x - mean) / std);
    }
  }
  const plane = size * size;
  const out = new Float32Array(3 * plane);
  for (let y = 0; y < size; y++) {
    let p = ((y + top) * rw + left) * 3;
    let q = y * size;
    for (let x = 0; x < size; x++, p += 3, q++) {
      out[q] = table[resized[p]];
      out[plane + q] = table[256 + resized[p + 1]];
      out[2 * plane + q] = table[512 + resized[p + 2]];
    }
  }
  return out;
}
