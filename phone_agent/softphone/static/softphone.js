// The softphone page: Twilio's side of a media stream, spoken from a browser.
//
// "Call" takes the microphone, asks the server for a call (POST softphone/call, with the operator
// secret typed into the page), then opens the media socket and behaves as Twilio does: `connected`
// and `start` (with the stream token in customParameters), one 20 ms mu-law `media` frame per
// 20 ms of microphone audio, the agent's audio played at real time, each `mark` echoed once the
// audio before it has played, and `clear` honoured (buffer dropped, pending marks echoed). The
// transcript and turn latencies come from the call's event feed (WS softphone/events).
//
// `window.softphone.stats` reports what happened, for people and for the tests.

const $ = (id) => document.getElementById(id);

const stats = {
  state: "idle", // idle | connecting | in-call | ended
  callSid: null,
  framesSent: 0,
  mediaReceived: 0,
  receivedMs: 0,
  playedMs: 0,
  discardedMs: 0,
  clears: 0,
  marksReceived: 0,
  marksEchoed: 0,
  marksEchoedOnClear: 0,
  echoes: [], // {name, at, playedAt, cleared}: positions in 8 kHz samples of the played stream
  turns: [], // agent audio as played here: {index, playedMs, rmsDb, hz, cleared, discardedMs, ended}
  feed: [], // every event of the call's feed
  transcript: [], // [{role, text}] by feed index
  errors: [],
  violations: [], // server messages Twilio would reject
  closeCode: null,
};

let session = null;

class Session {
  constructor(secret) {
    this.secret = secret; // in memory for this call only
    this.seq = 0;
    this.chunk = 0;
    this.streaming = false;
    this.started = false; // the server admitted the stream (the feed says so)
    this.closed = false;
  }

  async start() {
    // Created inside the click, so that it may play.
    this.context = new AudioContext({ latencyHint: "interactive" });
    this.microphone = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    await this.context.audioWorklet.addModule(new URL("worklet.js", import.meta.url));
    if (this.closed) return;

    const response = await fetch("softphone/call", {
      method: "POST",
      headers: { Authorization: `Bearer ${this.secret}` },
      cache: "no-store",
    });
    if (response.status === 401) throw new Error("The operator secret was refused.");
    if (!response.ok) throw new Error(`The server refused the call (${response.status}).`);
    const call = await response.json();
    if (this.closed) return;
    this.call = call;
    stats.callSid = call.call_sid;
    this.openFeed(call);
    this.openMedia(call);
  }

  // -- the event feed ---------------------------------------------------------------------

  openFeed(call) {
    const feed = new WebSocket(socketUrl(call.events_url));
    this.feed = feed;
    feed.onopen = () => {
      feed.send(JSON.stringify({ secret: this.secret }));
      this.secret = null; // used for the call and its feed; the page's field keeps it, no more
    };
    feed.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.type === "started") this.started = true;
      stats.feed.push(event);
      onFeedEvent(event);
    };
  }

  // -- the media stream -------------------------------------------------------------------

  openMedia(call) {
    const ws = new WebSocket(socketUrl(call.media_url));
    this.ws = ws;
    ws.onopen = () => this.begin();
    ws.onmessage = (message) => this.receive(message.data);
    ws.onclose = (event) => {
      stats.closeCode = event.code;
      this.teardown(event.code === 1000 ? "" : `The call closed (${event.code}).`);
    };
  }

  begin() {
    const call = this.call;
    this.ws.send(JSON.stringify({ event: "connected", protocol: "Call", version: "1.0.0" }));
    this.send("start", {
      accountSid: call.account_sid,
      streamSid: call.stream_sid,
      callSid: call.call_sid,
      tracks: ["inbound"],
      customParameters: call.parameters,
      mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
    });
    this.streaming = true;

    const context = this.context;
    this.capture = new AudioWorkletNode(context, "softphone-capture", { numberOfOutputs: 0 });
    this.capture.port.onmessage = (event) => this.sendFrame(event.data);
    this.source = context.createMediaStreamSource(this.microphone);
    this.source.connect(this.capture);
    this.playback = new AudioWorkletNode(context, "softphone-playback", {
      numberOfInputs: 0,
      outputChannelCount: [1],
    });
    this.playback.port.onmessage = (event) => this.played(event.data);
    this.playback.connect(context.destination);
    context.resume();
    setState("in-call", `In call — ${call.call_sid}`);
  }

  /** Number and send one message as Twilio does: `sequenceNumber` counts every message. */
  send(event, body) {
    if (!this.streaming && event !== "start") return;
    if (this.ws.readyState !== WebSocket.OPEN) return;
    this.seq += 1;
    const message = { event, sequenceNumber: String(this.seq), streamSid: this.call.stream_sid };
    message[event] = body;
    this.ws.send(JSON.stringify(message));
  }

  sendFrame({ frame, level }) {
    showLevel(level);
    if (!this.streaming) return;
    this.chunk += 1;
    this.send("media", {
      track: "inbound",
      chunk: String(this.chunk),
      timestamp: String(this.chunk * 20),
      payload: toBase64(new Uint8Array(frame)),
    });
    stats.framesSent += 1;
  }

  receive(data) {
    const message = parseServerMessage(data, this.call.stream_sid);
    if (message.violation) {
      // Twilio would reject it (its debugger codes) and act on nothing.
      stats.violations.push(message.violation);
    } else if (message.event === "media") {
      stats.mediaReceived += 1;
      stats.receivedMs += message.bytes.length / 8;
      this.playback.port.postMessage({ type: "media", bytes: message.bytes }, [message.bytes.buffer]);
    } else if (message.event === "mark") {
      stats.marksReceived += 1;
      this.playback.port.postMessage({ type: "mark", name: message.name });
    } else {
      this.playback.port.postMessage({ type: "clear" });
    }
    render();
  }

  /** What the playback worklet reports: marks to echo, turns of audio played. */
  played(message) {
    if (message.type === "played" || message.type === "cleared") {
      const cleared = message.type === "cleared";
      if (cleared) {
        stats.clears += 1;
        stats.discardedMs += message.discarded / 8;
      }
      for (const mark of message.marks) {
        this.send("mark", { name: mark.name });
        stats.marksEchoed += 1;
        if (cleared) stats.marksEchoedOnClear += 1;
        stats.echoes.push({ name: mark.name, at: mark.at, playedAt: mark.playedAt, cleared });
      }
    } else if (message.type === "turn-start" || message.type === "progress" || message.type === "turn-end") {
      const turn = message.turn;
      stats.turns[turn.index] = turn;
      stats.playedMs = stats.turns.reduce((sum, t) => sum + t.playedMs, 0);
    }
    render();
  }

  hangUp() {
    if (this.streaming) this.send("stop", { accountSid: this.call.account_sid, callSid: this.call.call_sid });
    this.teardown("");
  }

  teardown(error) {
    if (this.closed) return;
    this.closed = true;
    this.streaming = false;
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
    if (this.capture) this.capture.port.postMessage("stop");
    if (this.playback) this.playback.port.postMessage({ type: "stop" });
    if (this.microphone) for (const track of this.microphone.getTracks()) track.stop();
    if (this.context) this.context.close();
    // The server ends the feed after the call's `ended`; a call that never started has none.
    if (this.feed && !this.started) this.feed.close();
    else if (this.feed) setTimeout(() => this.feed.close(), 10_000);
    if (session === this) session = null;
    if (error) {
      stats.errors.push(error);
      setState("ended", error);
    } else {
      setState("ended", "Call ended");
    }
  }
}

// -- page ---------------------------------------------------------------------------------------

async function call() {
  if (session) return;
  const secret = $("secret").value;
  if (!secret) {
    stats.errors.push("no secret");
    setState("idle", "Type the operator secret first.");
    return;
  }
  resetCall();
  setState("connecting", "Connecting…");
  const current = new Session(secret);
  session = current;
  try {
    await current.start();
  } catch (error) {
    current.teardown(error.message || String(error));
    setState("idle", error.message || String(error));
  }
}

function hangUp() {
  if (session) session.hangUp();
}

function resetCall() {
  Object.assign(stats, {
    callSid: null, framesSent: 0, mediaReceived: 0, receivedMs: 0, playedMs: 0, discardedMs: 0,
    clears: 0, marksReceived: 0, marksEchoed: 0, marksEchoedOnClear: 0, echoes: [], turns: [],
    feed: [], transcript: [], violations: [], closeCode: null,
  });
  render();
}

function onFeedEvent(event) {
  if (event.type === "transcript") {
    stats.transcript[event.index] = { role: event.role, text: event.text };
  } else if (event.type === "ended") {
    setState(stats.state, `Call ended (${event.reason})`);
  }
  render();
}

function setState(state, text) {
  stats.state = state;
  $("status").textContent = text;
  $("status").dataset.state = state;
  $("call").disabled = state === "connecting" || state === "in-call";
  $("hangup").disabled = state !== "in-call";
}

let lastLevelUpdate = 0;
function showLevel(level) {
  const now = performance.now();
  if (now - lastLevelUpdate < 100) return;
  lastLevelUpdate = now;
  $("level").value = Math.max(0, Math.min(60, level + 60));
}

let renderQueued = false;
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderTranscript();
    renderTurns();
    renderStats();
  });
}

function renderTranscript() {
  // Consecutive fragments of the caller's speech read as one line.
  const lines = [];
  for (const entry of stats.transcript) {
    if (!entry) continue;
    const last = lines[lines.length - 1];
    if (last && last.role === "caller" && entry.role === "caller") last.text += ` ${entry.text}`;
    else lines.push({ ...entry });
  }
  const list = $("transcript");
  list.replaceChildren(
    ...lines.map(({ role, text }) => {
      const item = document.createElement("li");
      item.className = role;
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = role === "caller" ? "You" : "Agent";
      const said = document.createElement("span");
      said.textContent = text.replace(/\s+/g, " ").trim();
      item.append(who, said);
      return item;
    }),
  );
}

function renderTurns() {
  const latencies = stats.feed.filter((e) => e.type === "turn");
  const bargeIns = stats.feed.filter((e) => e.type === "barge_in");
  const count = Math.max(latencies.length, stats.turns.length);
  const rows = [];
  for (let i = 0; i < count; i++) {
    const server = latencies[i];
    const played = stats.turns[i];
    const cut = server && bargeIns.find((b) => b.generation === server.generation);
    rows.push([
      String(i + 1),
      server && server.heard_latency_ms !== null ? `${server.heard_latency_ms} ms` : "—",
      played ? `${Math.round(played.playedMs)} ms${played.ended ? "" : " …"}` : "—",
      played && played.cleared ? "cut (clear)" : cut ? "cut" : "",
    ]);
  }
  $("turns").replaceChildren(
    ...rows.map((cells) => {
      const row = document.createElement("tr");
      for (const text of cells) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    }),
  );
}

function renderStats() {
  $("stats").textContent =
    `frames sent ${stats.framesSent} · agent audio received ${Math.round(stats.receivedMs)} ms, ` +
    `played ${Math.round(stats.playedMs)} ms · clears ${stats.clears} · ` +
    `marks echoed ${stats.marksEchoed} (${stats.marksEchoedOnClear} on clear)`;
}

const ALLOWED_KEYS = { media: ["event", "streamSid", "media"], mark: ["event", "streamSid", "mark"], clear: ["event", "streamSid"] };

/** A message from the server checked as Twilio checks it (the simulator's rules). */
function parseServerMessage(data, streamSid) {
  if (typeof data !== "string") return { violation: "31950: binary frame" };
  let message;
  try {
    message = JSON.parse(data);
  } catch {
    return { violation: "31951: not valid JSON" };
  }
  if (!message || typeof message !== "object" || Array.isArray(message)) {
    return { violation: "31951: not a JSON object" };
  }
  const event = message.event;
  if (!Object.hasOwn(ALLOWED_KEYS, event)) return { violation: `31951: unknown event ${event}` };
  if (message.streamSid !== streamSid) return { violation: `31951: ${event}: wrong streamSid` };
  const extra = Object.keys(message).filter((key) => !ALLOWED_KEYS[event].includes(key));
  if (extra.length) return { violation: `31951: ${event}: unexpected fields ${extra}` };
  if (event === "clear") return { event };
  const body = message[event];
  const keys = body && typeof body === "object" ? Object.keys(body) : [];
  if (event === "mark") {
    if (keys.length !== 1 || typeof body.name !== "string") {
      return { violation: "31951: mark: body must be exactly {name: string}" };
    }
    return { event, name: body.name };
  }
  if (keys.length !== 1 || typeof body.payload !== "string") {
    return { violation: "31951: media: body must be exactly {payload}" };
  }
  try {
    return { event, bytes: fromBase64(body.payload) };
  } catch {
    return { violation: "31951: media: payload is not valid base64" };
  }
}

function socketUrl(relative) {
  const url = new URL(relative, document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function toBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
  return btoa(text);
}

function fromBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

$("hangup").addEventListener("click", hangUp);
$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  call();
});
window.softphone = { stats, call, hangUp };
setState("idle", "Idle");
render();
