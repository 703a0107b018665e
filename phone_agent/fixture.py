"""Recorded-call fixtures, format v1: load, validate, save.

A fixture is one phone call as both peers of the bridge saw it, so that replay can put the bridge
back between the same two peers:

```json
{
  "format": "phone-agent/call-fixture",
  "version": 1,
  "name": "order-status",
  "description": "Caller asks where order 1042 is; the agent answers.",
  "metadata": {"source": "synthetic", "model": "gemini-live-2.5-flash-preview"},
  "caller": [
    {"t_ms": 0, "message": {"event": "connected", "protocol": "Call", "version": "1.0.0"}},
    {"t_ms": 1, "message": {"event": "start", "sequenceNumber": "1", "start": {...}, ...}},
    {"t_ms": 21, "message": {"event": "media", "media": {"timestamp": "20", ...}, ...}},
    ...
  ],
  "model": {"turns": [
    {"trigger": "speech_end", "messages": [
       {"t_ms": 0, "message": {"serverContent": {"inputTranscription": {"text": "where…"}}}},
       {"t_ms": 180, "message": {"serverContent": {"modelTurn": {"parts": [{"inlineData": ...}]}}}}
    ]}
  ], "session": [{"t_ms": 9000, "message": {"goAway": {"timeLeft": "50s"}}}]},
  "expect": {"turns": 1, "clears": 0, "tools_called": [], "dtmf": "", "end_reason": "caller_stop",
             "heard": [{"min_ms": 1500, "max_ms": 1700, "interrupted": false}],
             "agent_transcript_contains": ["on its way"]}
}
```

- `caller`: every message Twilio sent, verbatim, with `t_ms` since the socket opened (original
  timing: gaps in `media.timestamp`, `dtmf` and `stop` included).
- `model.turns`: the Gemini server messages of each model turn (either casing; recordings hold
  them as the SDK parsed and re-serialised them: camelCase, URL-safe base64), with
  `t_ms` measured from the turn's *trigger*: `speech_end` (the caller stopped talking), `text`
  (the bridge sent text), or `tool_response` (the bridge answered a tool call). Replay fires each
  turn when its trigger happens, so the model reacts to the bridge instead of playing blind.
- `model.session`: connection-level server messages (`goAway`, `sessionResumptionUpdate`) with
  `t_ms` since the socket opened; replay re-creates the `goAway` at that time.
- `expect`: the outcome replay must reproduce. Every key is optional; absent means "not checked".
  `heard` lists, per model turn, the range of milliseconds the caller heard and whether the turn
  was interrupted.

Files are JSON, or gzip-compressed JSON when the name ends in `.gz`. Recordings of real calls
end in `.json.gz.enc`: the gzip bytes sealed with the data key (`phone_agent.encryption`), and
reading them needs a `DataCipher` holding that key.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from phone_agent.encryption import ENCRYPTED_SUFFIX, EncryptionError

if TYPE_CHECKING:
    from phone_agent.encryption import DataCipher

FORMAT = "phone-agent/call-fixture"
VERSION = 1
TRIGGERS = ("speech_end", "text", "tool_response", "any")


class FixtureError(ValueError):
    """A fixture file is malformed; the message says where."""


@dataclass(frozen=True)
class TimedMessage:
    """One protocol message and when it happened (ms)."""

    t_ms: float
    message: Mapping[str, Any] = field(hash=False)


@dataclass(frozen=True)
class ModelTurn:
    trigger: str
    messages: tuple[TimedMessage, ...]


@dataclass(frozen=True)
class HeardRange:
    min_ms: float = 0.0
    max_ms: float = float("inf")
    interrupted: bool | None = None


@dataclass(frozen=True)
class Expectations:
    turns: int | None = None
    clears: int | None = None
    tools_called: tuple[str, ...] | None = None
    dtmf: str | None = None
    gap_fill_ms: int | None = None
    end_reason: str | None = None
    heard: tuple[HeardRange, ...] | None = None
    agent_transcript_contains: tuple[str, ...] = ()


@dataclass(frozen=True)
class CallFixture:
    name: str
    caller: tuple[TimedMessage, ...]
    model_turns: tuple[ModelTurn, ...]
    expect: Expectations = Expectations()
    session_events: tuple[TimedMessage, ...] = ()
    description: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)

    # -- (de)serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        expect: dict[str, Any] = {}
        e = self.expect
        if e.turns is not None:
            expect["turns"] = e.turns
        if e.clears is not None:
            expect["clears"] = e.clears
        if e.tools_called is not None:
            expect["tools_called"] = list(e.tools_called)
        if e.dtmf is not None:
            expect["dtmf"] = e.dtmf
        if e.gap_fill_ms is not None:
            expect["gap_fill_ms"] = e.gap_fill_ms
        if e.end_reason is not None:
            expect["end_reason"] = e.end_reason
        if e.heard is not None:
            expect["heard"] = [_heard_dict(h) for h in e.heard]
        if e.agent_transcript_contains:
            expect["agent_transcript_contains"] = list(e.agent_transcript_contains)
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "description": self.description,
            "metadata": dict(self.metadata),
            "caller": [_timed_dict(m) for m in self.caller],
            "model": {
                "turns": [
                    {"trigger": t.trigger, "messages": [_timed_dict(m) for m in t.messages]}
                    for t in self.model_turns
                ],
                "session": [_timed_dict(m) for m in self.session_events],
            },
            "expect": expect,
        }

    @classmethod
    def from_dict(cls, data: Any) -> CallFixture:
        root = _mapping(data, "fixture")
        if root.get("format") != FORMAT:
            raise FixtureError(f"fixture: 'format' must be {FORMAT!r}")
        if root.get("version") != VERSION:
            raise FixtureError(f"fixture: unsupported version {root.get('version')!r}")
        model = _mapping(root.get("model", {}), "model")
        turns = []
        for i, raw in enumerate(_sequence(model.get("turns", []), "model.turns")):
            turn = _mapping(raw, f"model.turns[{i}]")
            trigger = turn.get("trigger", "speech_end")
            if trigger not in TRIGGERS:
                raise FixtureError(f"model.turns[{i}].trigger must be one of {TRIGGERS}")
            messages = _timed_list(turn.get("messages", []), f"model.turns[{i}].messages")
            turns.append(ModelTurn(str(trigger), messages))
        return cls(
            name=_string(root.get("name", ""), "name"),
            description=_string(root.get("description", ""), "description"),
            metadata=_mapping(root.get("metadata", {}), "metadata"),
            caller=_timed_list(root.get("caller", []), "caller"),
            model_turns=tuple(turns),
            session_events=_timed_list(model.get("session", []), "model.session"),
            expect=_expectations(_mapping(root.get("expect", {}), "expect")),
        )

    def dumps(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2)

    def save(self, path: str | Path, *, cipher: DataCipher | None = None) -> Path:
        """Write to `path`; a name ending in `.enc` is sealed with `cipher` (required then)."""
        path = Path(path)
        sealed = path.suffix == ENCRYPTED_SUFFIX
        if sealed and cipher is None:
            raise FixtureError(f"{path}: an encrypted fixture needs the data key")
        data = self.dumps()
        if _gzipped(path):
            data = gzip.compress(data, mtime=0)
        if sealed and cipher is not None:
            data = cipher.encrypt(data)
        path.write_bytes(data)
        return path

    @classmethod
    def load(cls, path: str | Path, *, cipher: DataCipher | None = None) -> CallFixture:
        """Read `path`; one ending in `.enc` is opened with `cipher` (required then)."""
        path = Path(path)
        sealed = path.suffix == ENCRYPTED_SUFFIX
        if sealed and cipher is None:
            raise FixtureError(
                f"{path}: the recording is encrypted; set PHONE_AGENT_DATA_KEY to its key"
            )
        try:
            raw = path.read_bytes()
            if sealed and cipher is not None:
                raw = cipher.decrypt(raw)
            if _gzipped(path):
                raw = gzip.decompress(raw)
            data = orjson.loads(raw)
        except (OSError, EOFError, gzip.BadGzipFile, orjson.JSONDecodeError) as exc:
            raise FixtureError(f"{path}: cannot read fixture: {exc}") from None
        except EncryptionError as exc:
            raise FixtureError(f"{path}: {exc}") from None
        try:
            return cls.from_dict(data)
        except FixtureError as exc:
            raise FixtureError(f"{path}: {exc}") from None


def _gzipped(path: Path) -> bool:
    """`x.json.gz` and `x.json.gz.enc` hold gzip (under the seal, for the latter)."""
    name = path.stem if path.suffix == ENCRYPTED_SUFFIX else path.name
    return name.endswith(".gz")


def _timed_dict(message: TimedMessage) -> dict[str, Any]:
    return {"t_ms": round(message.t_ms, 3), "message": message.message}


def _heard_dict(heard: HeardRange) -> dict[str, Any]:
    out: dict[str, Any] = {"min_ms": heard.min_ms}
    if heard.max_ms != float("inf"):
        out["max_ms"] = heard.max_ms
    if heard.interrupted is not None:
        out["interrupted"] = heard.interrupted
    return out


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise FixtureError(f"{where} must be an object")
    return dict(value)


def _sequence(value: Any, where: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise FixtureError(f"{where} must be a list")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise FixtureError(f"{where} must be a string")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FixtureError(f"{where} must be a number")
    return float(value)


def _timed_list(value: Any, where: str) -> tuple[TimedMessage, ...]:
    out = []
    last = float("-inf")
    for i, raw in enumerate(_sequence(value, where)):
        item = _mapping(raw, f"{where}[{i}]")
        t_ms = _number(item.get("t_ms"), f"{where}[{i}].t_ms")
        if t_ms < last:
            raise FixtureError(f"{where}[{i}].t_ms goes back in time")
        last = t_ms
        out.append(TimedMessage(t_ms, _mapping(item.get("message"), f"{where}[{i}].message")))
    return tuple(out)


def _expectations(data: dict[str, Any]) -> Expectations:
    heard = None
    if "heard" in data:
        heard = tuple(
            HeardRange(
                min_ms=_number(h.get("min_ms", 0), f"expect.heard[{i}].min_ms"),
                max_ms=_number(h.get("max_ms", float("inf")), f"expect.heard[{i}].max_ms"),
                interrupted=h.get("interrupted"),
            )
            for i, h in enumerate(_mapping(x, "expect.heard[]") for x in data["heard"])
        )
    tools = data.get("tools_called")
    return Expectations(
        turns=data.get("turns"),
        clears=data.get("clears"),
        tools_called=tuple(_sequence(tools, "expect.tools_called")) if tools is not None else None,
        dtmf=data.get("dtmf"),
        gap_fill_ms=data.get("gap_fill_ms"),
        end_reason=data.get("end_reason"),
        heard=heard,
        agent_transcript_contains=tuple(data.get("agent_transcript_contains", ())),
    )
