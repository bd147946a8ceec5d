"""chrF against sacrebleu, refusal detection and refusal F1 on hand-labelled tables, perplexity."""
import math

import pytest
import sacrebleu

from seallm_jax.eval.metrics import accuracy, bits_per_byte, chrf, perplexity
from seallm_jax.eval.refusal import RefusalDetectorConfig, is_refusal, refusal_counts, refusal_f1

HYPOTHESES = ["ตลาดเปิดตอนเช้า", "Mưa rơi suốt đêm.", "She reads books weekly.", ""]
REFERENCES = ["ตลาดเปิดตั้งแต่เช้าตรู่", "Mưa rơi suốt đêm trong thung lũng.", "She reads a book every week.", "Empty output"]


def test_chrf_equals_sacrebleu_corpus_chrf():
    expected = sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score
    assert chrf(HYPOTHESES, REFERENCES) == pytest.approx(expected, abs=1e-12)


def test_chrf_is_100_for_identical_text_and_rejects_misaligned_lists():
    assert chrf(REFERENCES[:3], REFERENCES[:3]) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="2 hypotheses but 3 references"):
        chrf(HYPOTHESES[:2], REFERENCES[:3])


# (response, language, is a refusal) — labelled by hand.
REFUSAL_TABLE = [
    ("I'm sorry, but I can't help with that.", "en", True),
    ("I don’t know who that is; there is no information about such a person.", "en", True),
    ("Paris is the capital of France.", "en", False),
    ("ขออภัย ฉันไม่สามารถให้ข้อมูลนี้ได้", "th", True),
    ("ประเทศไทยมี 77 จังหวัด", "th", False),
    ("Xin lỗi, tôi không thể trả lời câu hỏi này.", "vi", True),
    ("Sông Mê Kông là sông dài nhất chảy qua Việt Nam.", "vi", False),
    ("Maaf, saya tidak dapat membantu permintaan tersebut.", "id", True),
    ("Ibu kota Indonesia adalah Jakarta.", "id", False),
    ("抱歉，我无法提供这方面的帮助。", "zh", True),
    ("北京是中国的首都。", "zh", False),
    ("As an AI, I must decline.", "th", True),  # English refusal to a Thai question still counts
    ("", "en", False),
]


@pytest.mark.parametrize("response,language,expected", REFUSAL_TABLE)
def test_refusal_detection_table(response, language, expected):
    assert is_refusal(response, language) is expected


def test_refusal_window_ignores_phrases_deep_in_an_answer():
    answer = "Here is a long, helpful answer. " * 20 + "I cannot stress this enough."
    assert not is_refusal(answer, "en", RefusalDetectorConfig(window_chars=300))
    assert is_refusal(answer, "en", RefusalDetectorConfig(window_chars=None))


def test_refusal_f1_on_hand_labelled_table():
    # should_refuse = unanswerable. 3 TP, 1 FP, 1 FN, 2 TN.
    refused = [True, True, True, True, False, False, False]
    should_refuse = [True, True, True, False, True, False, False]
    counts = refusal_counts(refused, should_refuse)
    assert (counts.true_positive, counts.false_positive, counts.false_negative, counts.true_negative) == (3, 1, 1, 2)
    precision, recall = 3 / 4, 3 / 4
    assert refusal_f1(refused, should_refuse) == pytest.approx(2 * precision * recall / (precision + recall))
    assert refusal_f1([False] * 3, [True] * 3) == 0.0  # never refusing scores zero, not a division error


def test_perplexity_accuracy_and_bits_per_byte():
    assert perplexity(-2 * math.log(4), 2) == pytest.approx(4.0)
    assert bits_per_byte(-8 * math.log(2), 4) == pytest.approx(2.0)
    assert accuracy([True, False, True, True]) == 0.75
