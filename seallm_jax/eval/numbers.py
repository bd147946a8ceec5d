"""Final-number extraction for math answers written in any script and any local number format.

Handles native digits (Thai ๑๒๓, Lao, Khmer, Burmese, Tamil, full-width ...), thousands and decimal
separators in both conventions ("1,234.5" and "1.234,5"), non-breaking-space grouping and minus signs.
"""
from __future__ import annotations

import re
import unicodedata

from seallm_jax.eval.languages import COMMA_DECIMAL_LANGUAGES

# Characters that may group thousands besides ',' and '.': apostrophe (Swiss style), no-break
# space, narrow no-break space, thin space. A plain space is excluded on purpose: "3 4" in a
# sentence is two numbers far more often than one.
_GROUP_SPACES = "'\u00a0\u202f\u2009"
_MINUS_SIGNS = "-\u2212\u2013"  # hyphen-minus, minus sign, en dash
_NUMBER_PATTERN = re.compile(rf"(?<![\d.,])([{_MINUS_SIGNS}]?)(\d(?:[\d,.{_GROUP_SPACES}]*\d)?)")
_BOXED_PATTERN = re.compile(r"\\boxed\{([^{}]*)\}")


def to_ascii_digits(text: str) -> str:
    """Replace every Unicode decimal digit (Thai, Lao, Khmer, Burmese, ...) by its ASCII digit.

    Full-width commas and periods become ASCII too, so the separator logic sees one alphabet.
    """
    characters = []
    for character in text:
        if character.isdigit() and not character.isascii():
            value = unicodedata.decimal(character, None)
            characters.append(str(value) if value is not None else character)
        elif character == "\uff0c":
            characters.append(",")
        elif character == "\uff0e":
            characters.append(".")
        else:
            characters.append(character)
    return "".join(characters)


def parse_number(token: str, language: str | None = None) -> float | None:
    """Parse one number token ("1.234,5", "1,234.5", "12", "๑๒๓") to a float; None if malformed.

    Rules, in order: grouping spaces are dropped; when both ',' and '.' occur the last one is the
    decimal separator; a separator that occurs more than once groups thousands; a lone separator
    followed by exactly three digits groups thousands unless the language writes decimals with that
    separator ('.' in dot-decimal languages, ',' in comma-decimal ones); otherwise it is decimal.
    """
    text = to_ascii_digits(token.strip())
    negative = bool(text) and text[0] in _MINUS_SIGNS
    if negative:
        text = text[1:]
    for space in _GROUP_SPACES:
        text = text.replace(space, "")
    if not text or not text[0].isdigit() or not text[-1].isdigit():
        return None
    has_comma, has_dot = "," in text, "." in text
    if has_comma and has_dot:
        decimal = "," if text.rfind(",") > text.rfind(".") else "."
        group = "." if decimal == "," else ","
        if text.count(decimal) > 1:
            return None
        text = text.replace(group, "").replace(decimal, ".")
    elif has_comma or has_dot:
        separator = "," if has_comma else "."
        parts = text.split(separator)
        if len(parts) > 2:  # "1,234,567" / "1.234.567": grouping only
            if any(len(part) != 3 for part in parts[1:]):
                return None
            text = "".join(parts)
        else:
            whole, fraction = parts
            comma_decimal = language in COMMA_DECIMAL_LANGUAGES
            decimal_separator_of_language = "," if comma_decimal else "."
            looks_grouped = len(fraction) == 3 and 1 <= len(whole) <= 3
            if looks_grouped and (language is None or separator != decimal_separator_of_language):
                text = whole + fraction
            else:
                text = whole + "." + fraction
    if not re.fullmatch(r"\d+(\.\d+)?", text):
        return None
    value = float(text)
    return -value if negative else value


def find_numbers(text: str, language: str | None = None) -> list[float]:
    """All numbers in `text`, in order of appearance, parsed with `parse_number`."""
    normalized = to_ascii_digits(text)
    numbers = []
    for match in _NUMBER_PATTERN.finditer(normalized):
        sign = match.group(1)
        before = normalized[match.start() - 1] if match.start() > 0 else " "
        if sign and before.isalnum():
            sign = ""  # "10-2" and "A-3" are ranges or labels, not negative numbers
        value = parse_number(sign + match.group(2), language)
        if value is None:
            # Not one well-formed number ("1,2,3", "3.4.5"): a list of numbers written without spaces.
            parts = [float(part) for part in re.split(rf"[,.{_GROUP_SPACES}]", match.group(2)) if part]
            if parts and sign:
                parts[0] = -parts[0]
            numbers.extend(parts)
        else:
            numbers.append(value)
    return numbers


def extract_final_number(text: str, language: str | None = None) -> float | None:
    """The answer a math response ends on: the number in the last `\\boxed{}`, else the last number."""
    boxed = _BOXED_PATTERN.findall(text)
    for candidate in reversed(boxed):
        numbers = find_numbers(candidate, language)
        if numbers:
            return numbers[-1]
    numbers = find_numbers(text, language)
    return numbers[-1] if numbers else None


def numbers_match(predicted: float | None, expected: float, relative_tolerance: float = 1e-6) -> bool:
    """True when a predicted answer equals the expected one up to float rounding."""
    if predicted is None:
        return False
    return abs(predicted - expected) <= relative_tolerance * max(1.0, abs(expected))
