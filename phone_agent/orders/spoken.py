"""Order numbers, phone numbers and postcodes as callers say them and speech-to-text writes them.

Pure functions, no I/O.

**Canonical order number**: the digits alone, as a string (``"1042"``). Receipts print the shop's
prefix, ``A-1042``; the prefix carries no information, so it is accepted in any spelling
(``A-1042``, ``a 1042``, ``A1042``) and dropped. Another letter (``B-1042``) is not one of our
numbers. Leading zeros are kept (``"oh four two"`` is ``"042"``, which matches no order rather than
order 42).

Accepted spellings, mixed freely: digits (``1042``, ``1 0 4 2``, ``1,042``, ``10:42``, ``#1042``),
digit words (``one oh four two``, ``one zero four two``, ``double four``), paired numbers
(``ten forty-two``, ``nineteen eighty-four``) and cardinals (``one thousand and forty-two``,
``twelve hundred``), after filler such as ``order number``, ``it's`` or ``please``. Any other word
makes the text unreadable (``None``): we would rather ask the caller to repeat than guess.
Homophones (``for``, ``to``, ``won``) are not digits; they are too often real words.

**Phone numbers** compare in E.164 (``+15550100001``). National numbers are read in the North
American plan only (10 digits, or 11 starting with 1); other national forms are ambiguous without a
country and are rejected. Withheld caller IDs ("anonymous", "restricted" and their keypad-spelled
stand-ins such as ``+266696687``) are treated as no number.

**Postcodes** compare case- and space-insensitively (``sw1a 1aa`` = ``SW1A1AA``), with digit words
read as digits, the letter O and zero treated alike (callers say "oh" for both), and a US ZIP+4
matching its five-digit ZIP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

ORDER_PREFIX = "A"
"""The letter receipts print before an order number (``A-1042``)."""

MAX_ORDER_DIGITS = 12

_UNITS = {
    "zero": 0,
    "oh": 0,
    "o": 0,
    "nought": 0,
    "nil": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
}
_TEENS = {
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fourty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_REPEATS = {"double": 2, "triple": 3}
_FILLER_WORDS = (
    "order orders number numbers num no nr ref reference id is its it my the our "
    "please thanks um uh er erm so yeah yes ok okay hash pound sign and"
)
_FILLER = frozenset(_FILLER_WORDS.split())
_SEPARATORS = re.compile(r"[\s#:,.;\-–—/_()\"]+")
_PREFIXED = re.compile(r"^([a-z])(\d+)$")

# Twilio's stand-ins for a withheld caller ID (keypad spellings of ANONYMOUS, RESTRICTED, ...).
_WITHHELD = frozenset(
    {"anonymous", "restricted", "unknown", "unavailable", "blocked", "private"}
    | {"+266696687", "+7378742833", "+86282452253", "+2562533", "+8656696"}
)
_DAY_NAMES = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday"
_MONTH_NAMES = (
    "January February March April May June July August September October November December"
)
_DAYS = _DAY_NAMES.split()  # English whatever the process locale (strftime's %A is not)
_MONTHS = _MONTH_NAMES.split()
_E164 = re.compile(r"^\+[1-9]\d{7,14}$")


@dataclass
class _Cardinal:
    """A number being spoken as a quantity ("one thousand and forty-two")."""

    total: int  # thousands already closed
    current: int
    last: str  # kind of the last word: unit, teen, tens, digits, hundred, thousand

    def digits(self) -> str:
        return str(self.total + self.current)


def _tokens(text: str) -> list[str]:
    text = text.lower().replace("'", "").replace("’", "")  # "it's" -> "its"
    return [t for t in _SEPARATORS.split(text) if t]


def _strip_prefix(tokens: list[str]) -> list[str] | None:
    """Drop filler and the shop's letter prefix; None if another letter prefixes the number."""
    words = [t for t in tokens if t not in _FILLER]
    if not words:
        return words
    first = words[0]
    match = _PREFIXED.match(first)
    if match:
        if match.group(1) != ORDER_PREFIX.lower():
            return None
        return [match.group(2), *words[1:]]
    if len(first) == 1 and first.isalpha() and first not in _UNITS:
        if first != ORDER_PREFIX.lower():
            return None
        following = words[1] if len(words) > 1 else ""
        if following not in ("hundred", "thousand"):  # "a thousand and forty-two" is a quantity
            return words[1:]
        return ["one", *words[1:]]
    return words


def normalize_order_number(text: str) -> str | None:
    """The canonical order number in `text` (see the module docstring), or None if unreadable."""
    words = _strip_prefix(_tokens(text))
    if not words:
        return None
    out: list[str] = []
    card: _Cardinal | None = None

    def flush() -> None:
        nonlocal card
        if card is not None:
            out.append(card.digits())
            card = None

    i = 0
    while i < len(words):
        word = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if word.isdigit():
            flush()
            if nxt in ("hundred", "thousand") and len(word) <= 3:
                card = _Cardinal(0, int(word), "digits")
            else:
                out.append(word)
        elif word in _REPEATS:
            flush()
            if nxt in _UNITS:
                out.append(str(_UNITS[nxt]) * _REPEATS[word])
            elif len(nxt) == 1 and nxt.isdigit():
                out.append(nxt * _REPEATS[word])
            else:
                return None
            i += 1
        elif word in _UNITS or word in _TEENS or word in _TENS:
            value = _UNITS.get(word, _TEENS.get(word, _TENS.get(word, 0)))
            kind = "unit" if word in _UNITS else "teen" if word in _TEENS else "tens"
            if card is not None and card.last == "tens" and kind == "unit" and value:
                card.current += value  # forty-two
                card.last = kind
            elif card is not None and card.last in ("hundred", "thousand"):
                if value == 0:  # "one hundred oh five"
                    pass
                elif card.current % 100 == 0:
                    card.current += value
                    card.last = kind
                else:
                    flush()
                    card = _Cardinal(0, value, kind)
            else:
                flush()
                card = _Cardinal(0, value, kind)
        elif word == "hundred":
            if card is None:
                card = _Cardinal(0, 100, "hundred")
            elif card.current < 100 and card.last != "hundred":
                card.current = (card.current or 1) * 100
                card.last = "hundred"
            else:
                return None
        elif word == "thousand":
            if card is None:
                card = _Cardinal(1000, 0, "thousand")
            elif card.total == 0 and 0 < card.current < 1000:
                card.total, card.current, card.last = card.current * 1000, 0, "thousand"
            else:
                return None
        else:
            return None
        i += 1
    flush()
    number = "".join(out)
    if not number or not number.isdigit() or len(number) > MAX_ORDER_DIGITS:
        return None
    return number


def display_order_number(number: str) -> str:
    """How a receipt prints a canonical order number: ``A-1042``."""
    return f"{ORDER_PREFIX}-{number}"


def normalize_phone(text: str | None, default_country_code: str = "1") -> str | None:
    """`text` in E.164 (``+15550100001``), or None if withheld, empty or not a phone number."""
    if text is None:
        return None
    raw = text.strip()
    if raw.lower() in _WITHHELD or raw in _WITHHELD:
        return None
    if re.search(r"[^\d\s+().\-]", raw):
        return None
    digits = re.sub(r"\D", "", raw)
    if raw.startswith("+"):
        candidate = "+" + digits
    elif digits.startswith("00"):
        candidate = "+" + digits[2:]
    elif default_country_code == "1" and len(digits) == 10:
        candidate = "+1" + digits
    elif default_country_code == "1" and len(digits) == 11 and digits.startswith("1"):
        candidate = "+" + digits
    else:
        return None
    if candidate in _WITHHELD or not _E164.match(candidate):
        return None
    return candidate


def normalize_postcode(text: str) -> str:
    """`text` upper-cased with separators removed and digit words as digits: ``SW1A1AA``."""
    out = []
    for token in _tokens(text):
        if token in ("oh", "o"):
            out.append("O")  # letter or zero: `postcodes_match` treats them alike
        elif token in _UNITS:
            out.append(str(_UNITS[token]))
        else:
            out.append(token.upper())
    return "".join(out)


def postcodes_match(stated: str, on_file: str) -> bool:
    """Whether the postcode a caller stated is the one on file (see the module docstring)."""
    a = normalize_postcode(stated).replace("O", "0")
    b = normalize_postcode(on_file).replace("O", "0")
    if not a or not b:
        return False
    if a.isdigit() and b.isdigit() and {len(a), len(b)} <= {5, 9}:
        return a[:5] == b[:5]
    return a == b


def spoken_date(day: date) -> str:
    """A date as a voice reads it: ``Friday 28 November`` (no year: orders are recent)."""
    return f"{_DAYS[day.weekday()]} {day.day} {_MONTHS[day.month - 1]}"
