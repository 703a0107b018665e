from __future__ import annotations

from phone_agent.conversation import (
    DtmfBuffer,
    SilenceAction,
    SilenceWatch,
    TurnTranscript,
    dtmf_message,
    interrupted_note,
    resumed_note,
)


def test_silence_reprompts_once_then_hangs_up() -> None:
    watch = SilenceWatch(reprompt_s=5, hang_up_s=12, now=0.0)
    assert watch.check(4.9, agent_busy=False) is None
    assert watch.check(5.0, agent_busy=False) is SilenceAction.REPROMPT
    # The agent's re-prompt plays; it does not earn a second re-prompt.
    assert watch.check(6.0, agent_busy=True) is None
    assert watch.check(11.9, agent_busy=False) is None  # 5.9 s since the agent stopped
    assert watch.check(18.0, agent_busy=False) is SilenceAction.HANG_UP
    assert watch.check(30.0, agent_busy=False) is None  # once


def test_caller_speech_resets_the_silence() -> None:
    watch = SilenceWatch(reprompt_s=5, hang_up_s=12, now=0.0)
    assert watch.check(5.0, agent_busy=False) is SilenceAction.REPROMPT
    watch.activity(6.0)
    assert watch.check(10.9, agent_busy=False) is None
    assert watch.check(11.0, agent_busy=False) is SilenceAction.REPROMPT


def test_zero_disables_silence_handling() -> None:
    watch = SilenceWatch(reprompt_s=0, hang_up_s=0, now=0.0)
    assert watch.check(1e6, agent_busy=False) is None


def test_dtmf_digits_are_sent_together_after_a_pause_or_hash() -> None:
    keys = DtmfBuffer(pause_s=1.5)
    assert keys.press("1", 0.0) is None
    assert keys.press("0", 1.0) is None
    assert keys.due(2.4) is None
    assert keys.due(2.5) == "10"
    assert keys.due(9.0) is None
    keys.press("4", 10.0)
    assert keys.press("#", 10.2) == "4"
    assert keys.press("#", 11.0) == "#"
    assert dtmf_message("42") == "[The caller typed 4 2 on the phone keypad.]"


def test_heard_text_follows_the_audio_sent_before_each_piece() -> None:
    turn = TurnTranscript()
    turn.add(0.0, "Your order")
    turn.add(400.0, " left on")
    turn.add(900.0, " Monday.")
    assert turn.text() == "Your order left on Monday."
    assert turn.heard(0.0) == ""
    assert turn.heard(450.0) == "Your order left on"
    assert turn.heard(5000.0) == "Your order left on Monday."


def test_notes_to_the_model() -> None:
    assert "They heard only: «Your order»" in interrupted_note("Your order")
    assert "before hearing any" in interrupted_note("")
    assert "without starting over or greeting again" in resumed_note("Your order")
