from __future__ import annotations

import json
import logging

from phone_agent.logs import JsonFormatter, mask_number


def test_mask_number_keeps_only_country_prefix_and_last_two_digits() -> None:
    assert mask_number("+447911123456") == "+44********56"
    assert mask_number("") == ""
    assert mask_number("123") == "***"


def test_json_formatter_emits_extra_fields() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.event = "call.start"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "hello you" and line["event"] == "call.start" and line["level"] == "info"
