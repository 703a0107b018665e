"""`phone-agent forget NUMBER`: delete everything held about one caller.

What is held about a caller, and where (the business's orders are the business's records and stay):

* caller-memory notes, in the database (`memory.CallerMemory.forget`);
* recordings of their calls, on disk under their caller reference (`recorder.RecordingPolicy`);
* call records (`call_store`): each call's row, its turns and its sealed transcript, found by
  caller reference.

Every configured data key's caller reference is tried, so rotated keys leave nothing behind.
Without a data key nothing is filed by caller (no notes, recordings or transcripts can be kept;
call records hold only the masked number), so there is nothing to find.

Logs never hold the full number (`logs.mask_number`), so nothing is to be done there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio

from phone_agent import db
from phone_agent.call_store import CallStore
from phone_agent.config import Settings
from phone_agent.logs import mask_number
from phone_agent.memory import CallerMemory
from phone_agent.recorder import RecordingPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErasureReport:
    """What `forget_caller` deleted."""

    notes: int = 0
    recordings: int = 0
    calls: int = 0

    def lines(self) -> list[str]:
        return [
            f"removed {self.notes} caller-memory note(s)",
            f"removed {self.recordings} recording(s)",
            f"removed {self.calls} call record(s) with their transcripts",
        ]


async def forget_caller(settings: Settings, number: str) -> ErasureReport:
    """Delete every note and recording about `number` (see the module docstring)."""
    engine = db.create_engine(db.database_url(settings.database_url))
    try:
        await db.upgrade(engine)
        cipher = settings.data_cipher()
        notes = recordings = calls = 0
        if cipher is not None:
            notes = await CallerMemory(db.sessionmaker(engine), cipher=cipher).forget(number)
            policy = RecordingPolicy(settings.record_dir, cipher)
            recordings = await anyio.to_thread.run_sync(policy.forget, number)
            calls = await CallStore(db.sessionmaker(engine)).forget(cipher.caller_refs(number))
    finally:
        await engine.dispose()
    report = ErasureReport(notes=notes, recordings=recordings, calls=calls)
    log.info(
        "caller forgotten",
        extra={
            "event": "caller.forget",
            "phone": mask_number(number),
            "notes": report.notes,
            "recordings": report.recordings,
            "calls": report.calls,
        },
    )
    return report
