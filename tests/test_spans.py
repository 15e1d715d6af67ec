"""Restoration metrics against hand-computed values, and the span format helpers."""

import pytest

from domainfocus.spans import fill_spans, levenshtein, parse_spans, restoration_metrics

TARGET = "<extra_id_0>急性心肌梗死<extra_id_1>溶栓<extra_id_2>"


def test_perfect_restoration_scores_one_even_with_decoder_spacing_and_full_width_forms():
    prediction = "<pad><extra_id_0> 急性心肌梗死<extra_id_1> 溶栓<extra_id_2></s>"
    assert restoration_metrics([prediction], [TARGET]) == {
        "span_accuracy": 1.0, "char_accuracy": 1.0, "exact_match": 1.0}
    assert restoration_metrics(["<extra_id_0>ＣＴ<extra_id_1>"], ["<extra_id_0>CT<extra_id_1>"])["exact_match"] == 1.0


def test_hand_computed_partial_restoration():
    # Span 0 right (6 chars); span 1 "溶栓" predicted as "溶解" (1 edit of 2 chars).
    metrics = restoration_metrics(["<extra_id_0>急性心肌梗死<extra_id_1>溶解<extra_id_2>"], [TARGET])
    assert metrics["span_accuracy"] == pytest.approx(1 / 2)
    assert metrics["char_accuracy"] == pytest.approx(1 - 1 / 8)
    assert metrics["exact_match"] == 0.0


def test_empty_prediction_scores_zero():
    assert restoration_metrics([""], [TARGET]) == {"span_accuracy": 0.0, "char_accuracy": 0.0, "exact_match": 0.0}


def test_missing_sentinel_counts_its_span_as_empty():
    metrics = restoration_metrics(["<extra_id_0>急性心肌梗死"], [TARGET])
    assert metrics["span_accuracy"] == 0.5
    assert metrics["char_accuracy"] == pytest.approx(1 - 2 / 8)


def test_extra_sentinels_are_not_scored_and_a_repeated_sentinel_keeps_its_first_span():
    prediction = "<extra_id_0>急性心肌梗死<extra_id_1>溶栓<extra_id_2>多余<extra_id_3>更多<extra_id_0>错"
    assert restoration_metrics([prediction], [TARGET])["exact_match"] == 1.0


def test_char_accuracy_is_floored_at_zero():
    metrics = restoration_metrics(["<extra_id_0>一二三四五六七八九十<extra_id_1>"], ["<extra_id_0>痛<extra_id_1>"])
    assert metrics["char_accuracy"] == 0.0


def test_averages_over_spans_and_examples():
    targets = [TARGET, "<extra_id_0>阿司匹林<extra_id_1>"]
    predictions = ["<extra_id_0>急性心肌梗死<extra_id_1>溶栓", "<extra_id_0>氯吡格雷"]
    metrics = restoration_metrics(predictions, targets)
    assert metrics["span_accuracy"] == pytest.approx(2 / 3)
    assert metrics["exact_match"] == 0.5
    assert metrics["char_accuracy"] == pytest.approx(1 - 4 / 12)


def test_plain_text_targets_fall_back_to_whole_sequences():
    metrics = restoration_metrics(["患者出现胸痛症状。</s>", "患者出现胸闷"], ["患者出现胸痛症状。", "患者出现胸痛症状。"])
    assert metrics["exact_match"] == 0.5 and metrics["span_accuracy"] == 0.5
    assert metrics["char_accuracy"] == pytest.approx(1 - (0 + 4) / 18)


def test_levenshtein_and_span_helpers():
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3 and levenshtein("同", "同") == 0
    assert parse_spans("x<extra_id_0> a <extra_id_1>b</s>") == {0: "a", 1: "b"}
    assert fill_spans("患者出现<extra_id_0>症状，给予<extra_id_1>治疗。", {0: "胸痛"}) == "患者出现胸痛症状，给予治疗。"
