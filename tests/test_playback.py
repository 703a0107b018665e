from __future__ import annotations

import pytest

from phone_agent.playback import PlaybackTracker, SendClear, SendMark


def names(commands: list[object]) -> list[str]:
    return [c.name for c in commands if isinstance(c, SendMark)]


def test_marks_first_chunk_then_every_interval_then_turn_end() -> None:
    t = PlaybackTracker(mark_interval_ms=100)
    assert names(t.on_audio_sent(40, now=0.0)) == ["g1:m1:40"]
    assert t.on_audio_sent(40, now=0.01) == []
    assert names(t.on_audio_sent(80, now=0.02)) == ["g1:m2:160"]
    assert names(t.on_turn_complete(now=0.03)) == []  # everything already marked
    assert names(t.on_audio_sent(20, now=1.0)) == ["g2:m1:20"]
    t.on_audio_sent(30, now=1.01)
    assert names(t.on_turn_complete(now=1.02)) == ["g2:m2:50"]


def test_heard_position_and_first_heard_time_come_from_echoes() -> None:
    t = PlaybackTracker(mark_interval_ms=100)
    t.on_audio_sent(40, now=10.0)
    t.on_audio_sent(100, now=10.01)
    t.on_turn_complete(now=10.02)
    first = t.on_mark("g1:m1:40", now=10.2)
    assert first is not None and first.first_audio_heard
    assert first.turn.first_heard_at == pytest.approx(10.16)
    second = t.on_mark("g1:m2:140", now=10.3)
    assert second is not None and not second.first_audio_heard
    assert t.turns[0].heard_ms == 140 and t.turns[0].fully_heard
    assert t.unheard_ms() == 0


def test_barge_in_clears_and_ignores_echoes_of_cleared_marks() -> None:
    t = PlaybackTracker(mark_interval_ms=100)
    t.on_audio_sent(40, now=0.0)
    t.on_audio_sent(200, now=0.1)  # g1:m2:240
    t.on_mark("g1:m1:40", now=0.2)
    assert t.on_interrupted(now=0.3) == [SendClear()]
    assert not t.accepts_audio()
    # Twilio echoes pending marks on clear: they must not count as heard.
    assert t.on_mark("g1:m2:240", now=0.31) is None
    turn = t.turns[0]
    assert turn.interrupted and turn.cleared and turn.heard_ms == 40
    assert t.on_turn_complete(now=0.4) == []
    assert t.accepts_audio()
    assert names(t.on_audio_sent(20, now=0.5)) == ["g2:m1:20"]


def test_late_audio_of_interrupted_generation_cannot_be_sent() -> None:
    t = PlaybackTracker()
    t.on_audio_sent(40, now=0.0)
    t.on_interrupted(now=0.1)
    with pytest.raises(RuntimeError):
        t.on_audio_sent(40, now=0.2)


def test_barge_in_clears_previous_turn_still_playing() -> None:
    t = PlaybackTracker()
    t.on_audio_sent(500, now=0.0)
    t.on_turn_complete(now=0.1)  # model done, Twilio still playing
    assert t.on_interrupted(now=0.2) == [SendClear()]
    assert t.turns[0].cleared and not t.turns[0].interrupted


def test_no_clear_when_everything_was_heard() -> None:
    t = PlaybackTracker()
    t.on_audio_sent(40, now=0.0)
    t.on_turn_complete(now=0.1)
    t.on_mark("g1:m1:40", now=0.2)
    assert t.on_interrupted(now=0.3) == []


@pytest.mark.parametrize("name", ["", "hello", "g1:m1", "g999:m1:10", "g1:m1:10:extra"])
def test_foreign_or_unknown_marks_are_ignored(name: str) -> None:
    t = PlaybackTracker()
    t.on_audio_sent(40, now=0.0)
    assert t.on_mark(name, now=0.1) is None


def test_talking_over_a_finished_answer_clears_the_rest_and_next_audio_plays() -> None:
    t = PlaybackTracker()
    t.on_audio_sent(40, now=0.0)
    t.on_audio_sent(2000, now=0.1)
    t.on_turn_complete(now=0.2)  # fully generated, still playing
    t.on_mark("g1:m1:40", now=0.3)
    commands, cut = t.on_talked_over(now=0.5)
    assert commands == [SendClear()] and cut is t.turns[0]
    assert cut.cleared and cut.interrupted and cut.heard_ms == 40
    assert t.accepts_audio()  # the model's next answer is not dropped
    assert t.on_talked_over(now=0.6) == ([], None)  # nothing left to clear
    assert names(t.on_audio_sent(20, now=0.7)) == ["g2:m1:20"]


def test_talking_while_the_model_generates_is_left_to_interrupted() -> None:
    t = PlaybackTracker()
    t.on_audio_sent(400, now=0.0)
    assert t.on_talked_over(now=0.1) == ([], None)
