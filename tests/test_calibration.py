"""Confidence that means what it says: the calibration error is measured, a temperature and a shift
fitted on validation bring the confidence shown in line with how often restorations are right, and
they change the number shown, never the restoration."""

import json
import math
import random
import shutil

import pytest

from conftest import ROOT
from domainfocus.calibration import calibrated, calibration_error, fit, graded_spans, recalibrated
from domainfocus.damage import from_sentinels, target_lengths
from domainfocus.spans import build_targets, parse_spans
from test_restore import records_of, restore

ATLAS = "患者体温38.5℃，予布洛芬10㎎口服，诊断为Ⅱ型糖尿病，建议复查糖化血红蛋白。"


def pairs_of(temperature, shift, spans=3000, seed=0):
    """(the model's probability, right?) for spans whose true chance of being right is
    sigmoid(logit(p) / temperature + shift): a model miscalibrated in a known way."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(spans):
        probability = 1 / (1 + math.exp(-rng.uniform(-9, 4)))
        pairs.append((probability, rng.random() < calibrated(probability, temperature, shift)))
    return pairs


@pytest.mark.parametrize("temperature, shift", [(2.0, 1.5), (0.5, 0.0)], ids=["under-confident", "over-confident"])
def test_the_fitted_map_recovers_how_often_spans_are_right(temperature, shift):
    pairs = pairs_of(temperature, shift)
    fitted = fit(pairs)
    assert (fitted[0] > 1) == (temperature > 1)  # softens the over-confident, sharpens the under-confident
    if temperature > 1:  # spread over many probabilities, both numbers are well determined
        assert fitted == pytest.approx((temperature, shift), rel=0.25, abs=0.3)
    held_out = pairs_of(temperature, shift, seed=1)
    before, after = calibration_error(held_out), calibration_error(recalibrated(held_out, *fitted))
    assert before > 0.05 and after < before / 2


def test_too_few_spans_or_nothing_to_tell_apart_keeps_the_models_own_confidence():
    assert fit(pairs_of(2.0, 1.5, spans=20)) == (1.0, 0.0)
    assert fit([(probability, True) for probability, _ in pairs_of(2.0, 1.5)]) == (1.0, 0.0)
    wrong_way = [(probability, not right) for probability, right in pairs_of(0.5, 0.0)]
    assert fit(wrong_way) == (1.0, 0.0)  # confidence that falls with being right: nothing to show


def check_calibration_changes_the_number_not_the_restoration(restorer, examples):
    documents = [from_sentinels(text, target_lengths(target)) for text, target in examples]
    restorer.decoding.confidence_temperature, restorer.decoding.confidence_shift = 1.0, 0.0  # the model's own
    plain, pairs = graded_spans(restorer, documents, [target for _, target in examples])
    assert pairs
    for temperature, shift in ((2.0, 1.5), (0.5, -1.0)):
        restorer.decoding.confidence_temperature, restorer.decoding.confidence_shift = temperature, shift
        try:
            shown = restorer.restore_documents(documents, alternatives=2)
        finally:
            restorer.decoding.confidence_temperature, restorer.decoding.confidence_shift = 1.0, 0.0
        assert [result["restored"] for result in shown] == [result["restored"] for result in plain]
        for before, after in zip(plain, shown):
            for own, calibrated_span in zip(before["spans"], after["spans"]):
                assert calibrated_span["text"] == own["text"]
                if own["confidence"] is not None:
                    assert calibrated_span["confidence"] == pytest.approx(
                        calibrated(own["confidence"], temperature, shift), rel=2e-3, abs=1e-4)
                    confidences = [calibrated_span["confidence"]] + [a["confidence"] for a in
                                                                    calibrated_span["alternatives"]]
                    assert confidences == sorted(confidences, reverse=True)  # the order stays the model's


def run_folder(request, model):
    return request.getfixturevalue("finished_run")[0] if model == "demo" else request.getfixturevalue("mt5_run")


def validation(request, model, count=6):
    path = ROOT / "demo" / "valid.jsonl" if model == "demo" else request.getfixturevalue("clinical_data")[1]
    lines = path.read_text(encoding="utf-8").splitlines()[:count]
    return [(record["inputs"], record["targets"]) for record in map(json.loads, lines)]


@pytest.mark.parametrize("model", ["demo", "mt5"])
def test_calibration_changes_the_confidence_shown_never_the_restoration(request, model):
    from domainfocus.restoration import Restorer

    restorer = Restorer.load(str(run_folder(request, model) / "best"), device="cpu", num_beams=2)
    check_calibration_changes_the_number_not_the_restoration(restorer, validation(request, model))


@pytest.mark.parametrize("model", ["demo", "mt5"])
def test_training_logs_the_calibration_error_and_best_carries_its_own_temperature(request, model):
    output = run_folder(request, model)
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    evaluations = [record for record in records if "eval_calibration_error" in record]
    assert evaluations and all(0 <= record["eval_calibration_error"] <= 1 for record in evaluations)
    best = json.loads((output / "best" / "best_model.json").read_text())
    logged = next(record for record in evaluations if record["step"] == best["step"])
    saved = json.loads((output / "best" / "generation_config.json").read_text())
    assert (saved["confidence_temperature"], saved["confidence_shift"]) == (
        logged["eval_confidence_temperature"], logged["eval_confidence_shift"])
    assert (output / "reliability.png").stat().st_size > 1000


def test_restore_calibrate_fits_saves_and_applies_the_calibration(finished_run, small_data, tmp_path, hf_home):
    model = tmp_path / "model"
    shutil.copytree(finished_run[0] / "best", model)
    config = json.loads((model / "generation_config.json").read_text())
    config.update(confidence_temperature=1.0, confidence_shift=0.0)  # "before": the model's own probability
    (model / "generation_config.json").write_text(json.dumps(config))
    before = restore(hf_home, "--model", model, "--input", small_data[1], "--output", tmp_path / "before.jsonl")
    assert before.returncode == 0, before.stderr[-2000:]
    assert "calibration_error" in json.loads(before.stdout.splitlines()[-1])
    first = records_of(tmp_path / "before.jsonl")
    # Validation where the model is right exactly on its more confident half of the spans (their
    # targets are its own restorations, the others' their true texts): a calibration to find.
    confidences = sorted(span["confidence"] for record in first for span in record["spans"]
                         if span["confidence"] is not None)
    median = confidences[len(confidences) // 2]
    with open(tmp_path / "valid.jsonl", "w", encoding="utf-8") as handle:
        for record in first:
            truth = parse_spans(record["targets"])
            texts = [span["text"] if span["confidence"] is not None and span["confidence"] >= median
                     else truth.get(number, "") for number, span in enumerate(record["spans"])]
            handle.write(json.dumps({"inputs": record["inputs"], "targets": build_targets(texts)},
                                    ensure_ascii=False) + "\n")
    fitted = restore(hf_home, "--model", model, "--input", tmp_path / "valid.jsonl", "--output",
                     tmp_path / "after.jsonl", "--calibrate")
    assert fitted.returncode == 0, fitted.stderr[-2000:]
    assert "Saved confidence calibration" in fitted.stderr and (model / "reliability.png").exists()
    saved = json.loads((model / "generation_config.json").read_text())
    temperature, shift = saved["confidence_temperature"], saved["confidence_shift"]
    assert (temperature, shift) != (1.0, 0.0)
    own = [(span["confidence"], span["confidence"] >= median) for record in first for span in record["spans"]
           if span["confidence"] is not None]  # what the model's own confidence says on that validation
    metrics = json.loads(fitted.stdout.splitlines()[-1])
    assert metrics["calibration_error"] < calibration_error(own) and metrics["calibration_fitted_on_these"] is True
    second = records_of(tmp_path / "after.jsonl")
    assert [record["restored"] for record in first] == [record["restored"] for record in second]
    pairs = [(a, b) for x, y in zip(first, second) for a, b in zip(x["spans"], y["spans"]) if a["confidence"] is not None]
    for own, shown in pairs:  # the model's probability (rounded in the file), shown through the fitted map
        assert shown["confidence"] == pytest.approx(calibrated(own["confidence"], temperature, shift), rel=2e-2,
                                                    abs=2e-3)
        assert shown["confidence"] + sum(other["confidence"] for other in shown["alternatives"]) <= 1.0001
    (tmp_path / "damaged.txt").write_text(ATLAS.replace("布洛芬", "□□□") + "\n", encoding="utf-8")
    for path, message in ((tmp_path / "damaged.txt", "targets"), (small_data[1], "nothing was saved")):
        refused = restore(hf_home, "--model", model, "--input", path, "--output", tmp_path / "x.jsonl", "--calibrate")
        assert refused.returncode == 2 and message in refused.stderr.splitlines()[-1], refused.stderr[-2000:]
    assert json.loads((model / "generation_config.json").read_text()) == saved  # a refusal saves nothing
