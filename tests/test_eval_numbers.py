"""Final-number extraction on a table of local number formats and scripts."""
import pytest

from seallm_jax.eval.numbers import extract_final_number, find_numbers, numbers_match, parse_number, to_ascii_digits

# (response text, language or None, expected final number)
FINAL_NUMBER_TABLE = [
    ("The answer is 42.", "en", 42),
    ("So she pays 1,234.5 dollars", "en", 1234.5),
    ("Jadi totalnya 1.234,5 rupiah", "id", 1234.5),
    ("Vậy đáp số là 1.234.567 đồng", "vi", 1234567),
    ("Tổng cộng 2.000", "vi", 2000),
    ("Total 2,000", "en", 2000),
    ("The price is 1.25", "en", 1.25),
    ("Hasilnya 3,75", "id", 3.75),
    ("คำตอบคือ ๑๒๓", "th", 123),
    ("ดังนั้นเหลือ ๑,๒๓๔ บาท", "th", 1234),
    ("ตอบ 375 บาท", "th", 375),
    ("အဖြေမှာ ၁၂၃ ဖြစ်သည်", "my", 123),
    ("ចម្លើយគឺ ១២៣", "km", 123),
    ("ຄຳຕອບແມ່ນ ໑໒໓", "lo", 123),
    ("விடை ௧௨௩", "ta", 123),
    ("答案是１２３。", "zh", 123),
    ("温度是 −5 度", "zh", -5),
    ("It drops to -12 degrees", "en", -12),
    ("10-2=8", "en", 8),
    ("First 5 apples, then \\boxed{18}, then 3 more words", "en", 18),
    ("Montant : 1\u202f234,5", "vi", 1234.5),
    ("no digits here", "en", None),
]


@pytest.mark.parametrize("text,language,expected", FINAL_NUMBER_TABLE)
def test_final_number_in_local_formats(text, language, expected):
    assert extract_final_number(text, language) == expected


def test_native_digits_map_to_ascii():
    assert to_ascii_digits("๐๑๒๓๔๕๖๗๘๙ ၀၁၂၃၄၅၆၇၈၉ ០១២៣៤៥៦៧៨៩ ໐໑໒໓໔໕໖໗໘໙") == "0123456789 " * 3 + "0123456789"


def test_lone_separator_follows_the_language_convention():
    # "1.234": a decimal in English, thousands in Indonesian; without a language, three digits = thousands.
    assert parse_number("1.234", "en") == 1.234
    assert parse_number("1.234", "id") == 1234
    assert parse_number("1.234", None) == 1234
    assert parse_number("1,5", "id") == 1.5
    assert parse_number("1,5", "en") == 1.5


def test_run_together_list_is_several_numbers():
    assert find_numbers("1,2,3") == [1, 2, 3]


def test_numbers_match_tolerates_float_rounding_only():
    assert numbers_match(2000.0000000001, 2000)
    assert not numbers_match(2001, 2000)
    assert not numbers_match(None, 0)
