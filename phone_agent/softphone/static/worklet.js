// The softphone's audio thread: the microphone to 8 kHz mu-law frames, and the agent's mu-law to
// the speakers, played at real time with Twilio's mark and clear semantics.
import { MULAW_TO_FLOAT, captureResampler, floatToMulaw, playbackResampler } from "./dsp.js";

const FRAME_BYTES = 160; // 20 ms at 8 kHz
const PHONE_RATE = 8000;
const QUANTUM = 128;

/**
 * Microphone -> band-limited 8 kHz -> mu-law, posted as one 160-byte frame per 20 ms of audio:
 * `{frame: ArrayBuffer, level: dBFS}`. A missing input (no track yet, muted) counts as silence,
 * so the frames keep the audio clock.
 */
class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = captureResampler(sampleRate);
    this.frame = new Uint8Array(FRAME_BYTES);
    this.fill = 0;
    this.energy = 0;
    this.silence = new Float32Array(QUANTUM);
    this.running = true;
    this.emit = (y) => {
      this.frame[this.fill++] = floatToMulaw(y);
      this.energy += y * y;
      if (this.fill === FRAME_BYTES) {
        const level = 10 * Math.log10(this.energy / FRAME_BYTES + 1e-12);
        this.port.postMessage({ frame: this.frame.buffer, level }, [this.frame.buffer]);
        this.frame = new Uint8Array(FRAME_BYTES);
        this.fill = 0;
        this.energy = 0;
      }
    };
    this.port.onmessage = (event) => {
      if (event.data === "stop") this.running = false;
    };
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    this.resampler.push(input || this.silence, this.emit);
    return this.running;
  }
}

/** 400 ms with nothing to play ends a turn of agent audio (as heard here). */
const TURN_IDLE_SAMPLES = PHONE_RATE * 0.4;
const PROGRESS_EVERY = Math.round(PHONE_RATE * 0.1);

/**
 * Twilio's playback buffer: mu-law chunks queued in order and played at real time (8 kHz ->
 * the output rate through a band-limited interpolator); silence when there is nothing to play.
 *
 * Messages in: `{type: "media", bytes}`, `{type: "mark", name}`, `{type: "clear"}`,
 * `{type: "stop"}`. A mark sits at the end of the audio queued before it; it is posted back as
 * `{type: "played", marks}` once that audio has gone out to the speakers (at once if nothing is
 * queued). `clear` drops the queue and posts `{type: "cleared", marks, discarded}` with every
 * pending mark, as Twilio echoes them all. Turns of audio as heard here are reported with
 * `turn-start`, `progress` and `turn-end` (ms played, level, a zero-crossing pitch estimate).
 *
 * Positions are in 8 kHz samples of the played stream (agent audio and silence fill alike).
 */
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = playbackResampler(sampleRate);
    this.chunks = [];
    this.offset = 0; // into chunks[0]
    this.queued = 0;
    this.consumed = 0; // stream samples fed to the resampler
    this.emitted = 0; // output samples produced
    this.marks = []; // {name, at}: due once the stream has played up to `at`
    this.turn = null;
    this.turns = 0;
    this.running = true;
    this.out = null;
    this.filled = 0;
    this.overflow = new Float32Array(64);
    this.overflowLength = 0;
    this.input = new Float32Array(QUANTUM * 2);
    this.emit = (y) => {
      if (this.filled < QUANTUM) this.out[this.filled++] = y;
      else this.overflow[this.overflowLength++] = y;
      this.emitted++;
    };
    this.port.onmessage = (event) => this.receive(event.data);
  }

  playedPosition() {
    // The stream instant of the latest output sample.
    return (this.emitted - 1) * this.resampler.step;
  }

  receive(message) {
    if (message.type === "media") {
      if (message.bytes.length) {
        this.chunks.push(message.bytes);
        this.queued += message.bytes.length;
      }
    } else if (message.type === "mark") {
      this.marks.push({ name: message.name, at: this.consumed + this.queued });
      this.postDueMarks();
    } else if (message.type === "clear") {
      const discarded = this.queued;
      this.chunks = [];
      this.offset = 0;
      this.queued = 0;
      const marks = this.marks.map((m) => ({ name: m.name, at: m.at, playedAt: null }));
      this.marks = [];
      if (this.turn) this.endTurn(true, discarded);
      this.port.postMessage({ type: "cleared", marks, discarded });
    } else if (message.type === "stop") {
      this.running = false;
    }
  }

  postDueMarks() {
    const position = this.playedPosition();
    let due = 0;
    // The last sample before the mark is at `at - 1`.
    while (due < this.marks.length && this.marks[due].at - 1 <= position) due++;
    if (due === 0) return;
    const marks = this.marks.splice(0, due).map((m) => ({ ...m, playedAt: position }));
    this.port.postMessage({ type: "played", marks });
  }

  /** The next `count` stream samples: queued agent audio, then silence. */
  take(count) {
    if (this.input.length < count) this.input = new Float32Array(count * 2);
    const input = this.input.subarray(0, count);
    let n = 0;
    while (n < count && this.chunks.length) {
      const chunk = this.chunks[0];
      const end = Math.min(chunk.length, this.offset + (count - n));
      for (let i = this.offset; i < end; i++) input[n++] = MULAW_TO_FLOAT[chunk[i]];
      if (end === chunk.length) {
        this.chunks.shift();
        this.offset = 0;
      } else {
        this.offset = end;
      }
    }
    const audio = n;
    this.queued -= audio;
    input.fill(0, n);
    this.account(input, audio, count - audio);
    this.consumed += count;
    return input;
  }

  account(input, audio, silence) {
    if (audio > 0) {
      if (!this.turn) this.startTurn();
      const turn = this.turn;
      for (let i = 0; i < audio; i++) {
        const x = input[i];
        turn.energy += x * x;
        const sign = x > 0 ? 1 : x < 0 ? -1 : 0;
        if (sign !== 0) {
          if (turn.sign !== 0 && sign !== turn.sign) turn.crossings++;
          turn.sign = sign;
        }
      }
      turn.played += audio;
      turn.idle = 0;
      if (turn.played - turn.reported >= PROGRESS_EVERY) {
        turn.reported = turn.played;
        this.port.postMessage({ type: "progress", turn: this.describe(turn) });
      }
    }
    if (silence > 0 && this.turn) {
      this.turn.idle += silence;
      if (this.turn.idle >= TURN_IDLE_SAMPLES) this.endTurn(false, 0);
    }
  }

  startTurn() {
    this.turn = { index: this.turns++, played: 0, energy: 0, crossings: 0, sign: 0, idle: 0, reported: 0 };
    this.port.postMessage({ type: "turn-start", turn: this.describe(this.turn), at: currentTime });
  }

  endTurn(cleared, discarded) {
    const turn = this.describe(this.turn);
    turn.cleared = cleared;
    turn.discardedMs = discarded / 8;
    turn.ended = true;
    this.turn = null;
    this.port.postMessage({ type: "turn-end", turn, at: currentTime });
  }

  describe(turn) {
    const seconds = turn.played / PHONE_RATE;
    return {
      index: turn.index,
      playedMs: turn.played / 8,
      rmsDb: turn.played ? 10 * Math.log10(turn.energy / turn.played + 1e-12) : -120,
      hz: seconds > 0 ? Math.round(turn.crossings / 2 / seconds) : 0,
      cleared: false,
      discardedMs: 0,
      ended: false,
    };
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    this.out = out;
    this.filled = 0;
    const carried = Math.min(this.overflowLength, out.length);
    for (let i = 0; i < carried; i++) out[this.filled++] = this.overflow[i];
    this.overflow.copyWithin(0, carried, this.overflowLength);
    this.overflowLength -= carried;
    while (this.filled < out.length) {
      const before = this.filled;
      const needed = this.resampler.inputNeededFor(out.length - this.filled);
      this.resampler.push(this.take(needed), this.emit);
      if (this.filled === before) this.resampler.push(this.take(1), this.emit); // rounding
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.postDueMarks();
    return this.running;
  }
}

registerProcessor("softphone-capture", CaptureProcessor);
registerProcessor("softphone-playback", PlaybackProcessor);
