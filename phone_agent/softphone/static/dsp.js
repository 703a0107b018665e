// Audio arithmetic for the softphone: G.711 mu-law and a streaming windowed-sinc resampler.
// Plain functions and one class, no Web Audio: the worklets use them, and so do the tests.

// -- mu-law (G.711), bit-exact with Python's audioop.lin2ulaw / ulaw2lin ---------------------

const MULAW_BIAS = 0x84;
const MULAW_CLIP_14 = 8159;
const SEGMENT_END_14 = [0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff];

/** One 16-bit linear sample (an integer in [-32768, 32767]) as a mu-law byte. */
export function linearToMulaw(sample) {
  // The CCITT reference on the top 14 bits, as audioop does it.
  let value = sample >> 2;
  let mask = 0xff;
  if (value < 0) {
    value = -value;
    mask = 0x7f;
  }
  if (value > MULAW_CLIP_14) value = MULAW_CLIP_14;
  value += MULAW_BIAS >> 2;
  let segment = 0;
  while (segment < 8 && value > SEGMENT_END_14[segment]) segment++;
  if (segment >= 8) return 0x7f ^ mask;
  return ((segment << 4) | ((value >> (segment + 1)) & 0x0f)) ^ mask;
}

/** A float sample (nominally [-1, 1]; clipped) as a mu-law byte. */
export function floatToMulaw(x) {
  const scaled = Math.round(x * 32768);
  return linearToMulaw(scaled > 32767 ? 32767 : scaled < -32768 ? -32768 : scaled);
}

/** The 16-bit linear value of a mu-law byte. */
export function mulawToLinear(byte) {
  const u = ~byte & 0xff;
  let t = ((u & 0x0f) << 3) + MULAW_BIAS;
  t <<= (u & 0x70) >> 4;
  return u & 0x80 ? MULAW_BIAS - t : t - MULAW_BIAS;
}

/** mu-law byte -> float in [-1, 1). */
export const MULAW_TO_FLOAT = (() => {
  const table = new Float32Array(256);
  for (let b = 0; b < 256; b++) table[b] = mulawToLinear(b) / 32768;
  return table;
})();

// -- resampling -------------------------------------------------------------------------------

function besselI0(x) {
  let sum = 1;
  let term = 1;
  for (let k = 1; k < 50; k++) {
    term *= (x / (2 * k)) ** 2;
    sum += term;
    if (term < sum * 1e-12) break;
  }
  return sum;
}

/**
 * Streaming band-limited resampler between any two rates: a Kaiser-windowed sinc evaluated at
 * each output instant, read from a table of `phases` points per input sample (linearly
 * interpolated). The low-pass is at `cutoffHz` (-6 dB), `transitionHz` wide, with at least
 * `attenuationDb` of stop-band attenuation: from 48 kHz to 8 kHz with the defaults below,
 * 3.25 kHz passes, everything from 3.95 kHz up is 70 dB down, so nothing aliases.
 *
 * Delay: `halfWidth` input samples (about 3 ms). State carries across `push` calls, so the output
 * does not depend on how the input was chunked.
 */
export class Resampler {
  constructor(inRate, outRate, options = {}) {
    const cutoffHz = options.cutoffHz ?? 3600;
    const transitionHz = options.transitionHz ?? 700;
    const attenuationDb = options.attenuationDb ?? 70;
    const phases = options.phases ?? 256;
    this.step = inRate / outRate; // input samples per output sample
    const beta =
      attenuationDb > 50
        ? 0.1102 * (attenuationDb - 8.7)
        : attenuationDb >= 21
          ? 0.5842 * (attenuationDb - 21) ** 0.4 + 0.07886 * (attenuationDb - 21)
          : 0;
    const taps = (attenuationDb - 8) / (2.285 * 2 * Math.PI * (transitionHz / inRate));
    this.halfWidth = Math.ceil(taps / 2);
    this.phases = phases;
    const fc = cutoffHz / inRate; // cycles per input sample
    const h = this.halfWidth;
    const size = 2 * h * phases + 2;
    this.table = new Float32Array(size);
    const i0Beta = besselI0(beta);
    for (let j = 0; j < size; j++) {
      const tau = j / phases - h;
      const r = tau / h;
      const window = Math.abs(r) <= 1 ? besselI0(beta * Math.sqrt(1 - r * r)) / i0Beta : 0;
      const x = 2 * fc * tau;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      this.table[j] = 2 * fc * sinc * window;
    }
    // Input history: `h` zeros first, so the first output is centred on the first input sample.
    this.buffer = new Float32Array(4096);
    this.length = h;
    this.time = h; // the next output's instant, in buffer samples
  }

  /** Outputs available once `count` more input samples have been pushed (for pulling). */
  inputNeededFor(count) {
    const last = this.time + (count - 1) * this.step + this.halfWidth;
    return Math.max(0, Math.floor(last) + 1 - this.length);
  }

  /** Feed input samples; `emit(y)` is called once per output sample now computable. */
  push(input, emit) {
    this._append(input);
    const h = this.halfWidth;
    const phases = this.phases;
    const table = this.table;
    const buffer = this.buffer;
    while (this.time + h < this.length) {
      const t = this.time;
      const first = Math.ceil(t - h);
      // Offset of sample `first` in the table, in table points: (t - first) from the centre.
      let position = (h - (t - first)) * phases;
      const last = Math.floor(t + h);
      let acc = 0;
      for (let i = first; i <= last; i++) {
        const k = position | 0;
        const f = position - k;
        const a = table[k];
        acc += buffer[i] * (a + (table[k + 1] - a) * f);
        position += phases;
      }
      emit(acc);
      this.time += this.step;
    }
    this._trim();
  }

  _append(input) {
    const needed = this.length + input.length;
    if (needed > this.buffer.length) {
      const grown = new Float32Array(Math.max(needed, this.buffer.length * 2));
      grown.set(this.buffer.subarray(0, this.length));
      this.buffer = grown;
    }
    this.buffer.set(input, this.length);
    this.length = needed;
  }

  _trim() {
    const keepFrom = Math.floor(this.time - this.halfWidth) - 1;
    if (keepFrom > 2048) {
      this.buffer.copyWithin(0, keepFrom, this.length);
      this.length -= keepFrom;
      this.time -= keepFrom;
    }
  }
}

/** The capture chain's resampler: microphone rate -> 8 kHz, phone band. */
export function captureResampler(inRate) {
  return new Resampler(inRate, 8000, { cutoffHz: 3600, transitionHz: 700, attenuationDb: 70 });
}

/** The playback chain's resampler: 8 kHz -> output rate, images of the phone band removed. */
export function playbackResampler(outRate) {
  return new Resampler(8000, outRate, { cutoffHz: 3600, transitionHz: 700, attenuationDb: 70 });
}
