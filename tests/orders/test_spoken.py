from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phone_agent.orders.spoken import (
    display_order_number,
    normalize_order_number,
    normalize_phone,
    normalize_postcode,
    postcodes_match,
    spoken_date,
)


@pytest.mark.parametrize(
    "said",
    [
        "1042",
        "one oh four two",
        "one zero four two",
        "ONE OH FOUR TWO",
        "one-oh-four-two",
        "one o four two",
        "ten forty-two",
        "ten forty two",
        "Ten-forty-two.",
        "ten four two",
        "1 0 4 2",
        "1 oh 4 2",
        "10 42",
        "10:42",
        "1,042",
        "A-1042",
        "a-1042",
        "a 1042",
        "A1042",
        "a one oh four two",
        "order number 1042",
        "Order No. 1042",
        "order #A-1042",
        "#1042",
        "It's order number A-1042, please.",
        "it’s ten forty-two",
        "um, my order number is one zero four two",
        "one thousand and forty-two",
        "one thousand forty two",
        "a thousand and forty-two",
        "1042 ",
    ],
)
def test_order_number_spellings_of_1042(said: str) -> None:
    assert normalize_order_number(said) == "1042"


@pytest.mark.parametrize(
    ("said", "number"),
    [
        ("twelve hundred", "1200"),
        ("12 hundred", "1200"),
        ("twelve hundred and forty-two", "1242"),
        ("one thousand two hundred", "1200"),
        ("one hundred and five", "105"),
        ("one hundred oh five", "105"),
        ("nineteen eighty-four", "1984"),
        ("twenty twenty", "2020"),
        ("twenty one", "21"),
        ("ten oh two", "1002"),
        ("double four one two", "4412"),
        ("one double oh four", "1004"),
        ("triple 7", "777"),
        ("oh four two", "042"),
        ("0042", "0042"),
        ("1037", "1037"),
    ],
)
def test_order_number_other_forms(said: str, number: str) -> None:
    assert normalize_order_number(said) == number


@pytest.mark.parametrize(
    "said",
    [
        "",
        "   ",
        "order number",
        "B-1042",
        "b 1042",
        "my order is late",
        "1042 banana",
        "for two",
        "double",
        "double trouble",
        "one hundred hundred",
        "1234567890123",
        "ten point five",
    ],
)
def test_unreadable_order_numbers(said: str) -> None:
    assert normalize_order_number(said) is None


_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@given(st.text(alphabet="0123456789", min_size=1, max_size=12))
def test_any_digit_string_round_trips_as_digits_and_as_words(digits: str) -> None:
    assert normalize_order_number(digits) == digits
    assert normalize_order_number(" ".join(digits)) == digits
    assert normalize_order_number(" ".join(_WORDS[int(d)] for d in digits)) == digits
    assert normalize_order_number(f"A-{digits}") == digits


def test_display_order_number() -> None:
    assert display_order_number("1042") == "A-1042"


@pytest.mark.parametrize(
    ("text", "e164"),
    [
        ("+15550100001", "+15550100001"),
        ("+1 (555) 010-0001", "+15550100001"),
        ("555-010-0001", "+15550100001"),
        ("(555) 010 0001", "+15550100001"),
        ("1 555 010 0001", "+15550100001"),
        ("0015550100001", "+15550100001"),
        ("+44 20 7946 0958", "+442079460958"),
        ("00 44 20 7946 0958", "+442079460958"),
    ],
)
def test_phone_numbers_in_e164(text: str, e164: str) -> None:
    assert normalize_phone(text) == e164


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "anonymous",
        "Anonymous",
        "RESTRICTED",
        "+266696687",
        "+7378742833",
        "client:alice",
        "sip:alice@example.com",
        "12345",
        "020 7946 0958",
        "+0123456789",
        "+1234567890123456",
    ],
)
def test_no_phone_number(text: str | None) -> None:
    assert normalize_phone(text) is None


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("sw1a 1aa", "SW1A1AA"),
        ("SW1A1AA", "SW1A1AA"),
        (" s w 1 a  1 a a ", "SW1A1AA"),
        ("S W one A one A A", "SW1A1AA"),
        ("94107-1234", "941071234"),
        ("nine four one oh seven", "941O7"),
    ],
)
def test_normalize_postcode(text: str, normal: str) -> None:
    assert normalize_postcode(text) == normal


@pytest.mark.parametrize(
    ("stated", "on_file"),
    [
        ("sw1a 1aa", "SW1A 1AA"),
        ("SW1A1AA", "SW1A 1AA"),
        ("S W one A one A A", "SW1A 1AA"),
        ("s.w.1.a. 1.a.a.", "SW1A 1AA"),
        ("94107", "94107"),
        ("94107-1234", "94107"),
        ("94107", "94107-1234"),
        ("nine four one oh seven", "94107"),
        ("m1 1ae", "M1 1AE"),
        ("P O one one A A", "PO1 1AA"),
    ],
)
def test_postcodes_match(stated: str, on_file: str) -> None:
    assert postcodes_match(stated, on_file)


@pytest.mark.parametrize(
    ("stated", "on_file"),
    [
        ("SW1A 1AB", "SW1A 1AA"),
        ("SW1A", "SW1A 1AA"),
        ("", "SW1A 1AA"),
        ("   ", "SW1A 1AA"),
        ("SW1A 1AA", ""),
        ("94108", "94107"),
        ("9410", "94107"),
        ("94107-1234", "94108"),
    ],
)
def test_postcodes_differ(stated: str, on_file: str) -> None:
    assert not postcodes_match(stated, on_file)


@pytest.mark.parametrize(
    ("day", "spoken"),
    [
        (date(2025, 11, 28), "Friday 28 November"),
        (date(2025, 11, 13), "Thursday 13 November"),
        (date(2026, 1, 1), "Thursday 1 January"),
    ],
)
def test_spoken_date(day: date, spoken: str) -> None:
    assert spoken_date(day) == spoken
