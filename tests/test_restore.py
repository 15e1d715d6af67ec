"""restore.py on a trained demo model: fills every span, scores like training does, splits long lines."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, offline_environment
from spans import SENTINEL, fill_spans, parse_spans


def restore(hf_home, *arguments):
    return subprocess.run([sys.executable, str(ROOT / "restore.py"), *map(str, arguments)], capture_output=True,
                          text=True, timeout=300, env=offline_environment(hf_home))


def test_jsonl_with_targets_is_restored_and_scored_like_the_training_evaluation(finished_run, small_data,
                                                                                  tmp_path, hf_home):
    output_dir, _ = finished_run
    # The same examples that the training run scored at each evaluation (GEN_EVAL_SAMPLES=16).
    subset = tmp_path / "subset.jsonl"
    subset.write_text("\n".join(small_data[1].read_text(encoding="utf-8").splitlines()[:16]) + "\n", encoding="utf-8")
    result = restore(hf_home, "--model", output_dir / "latest", "--input", subset, "--output",
                     tmp_path / "restored.jsonl")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "restored.jsonl").read_text().splitlines()]
    originals = [json.loads(line) for line in subset.read_text(encoding="utf-8").splitlines()]
    assert len(records) == len(originals) == 16
    for record, original in zip(records, originals):
        assert record["inputs"] == original["inputs"] and record["targets"] == original["targets"]
        assert record["restored"] == fill_spans(record["inputs"], parse_spans(record["prediction"]))
        assert not SENTINEL.search(record["restored"])
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    # The training run scored these examples with the same greedy decoding at step 20.
    logged = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    at_end = [entry for entry in logged if entry.get("step") == 20 and "eval_span_accuracy" in entry][-1]
    for name in ("span_accuracy", "char_accuracy", "exact_match"):
        assert metrics[name] == pytest.approx(at_end[f"eval_{name}"], abs=1e-4)
    assert metrics["examples"] == 16


def test_text_with_mask_markers_including_more_than_100_in_a_line(finished_run, tmp_path, hf_home):
    lines = ["患者因□□入院，给予□治疗。", "Diagnosis: □. Plan: aspirin.", "no mask here",
             "，".join(["心电图□"] * 150)]
    (tmp_path / "damaged.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = restore(hf_home, "--model", finished_run[0] / "best", "--input", tmp_path / "damaged.txt",
                     "--output", tmp_path / "restored.jsonl", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "restored.jsonl").read_text().splitlines()]
    assert [record["inputs"] for record in records] == lines
    for record in records:
        assert "□" not in record["restored"] and not SENTINEL.search(record["restored"])
    assert records[0]["restored"].startswith("患者因") and records[0]["restored"].endswith("治疗。")
    assert sorted(parse_spans(records[3]["prediction"])) == list(range(151))  # 150 spans, then the closing one
    assert records[3]["restored"].count("心电图") >= 150
    assert records[2]["restored"] == "no mask here"
    assert "{" not in result.stdout  # no targets, no metrics line


def test_a_folder_that_is_not_a_model_is_a_one_line_error(tmp_path, hf_home):
    (tmp_path / "in.txt").write_text("x□\n", encoding="utf-8")
    result = restore(hf_home, "--model", tmp_path, "--input", tmp_path / "in.txt", "--output", tmp_path / "o.jsonl")
    assert result.returncode == 2 and "not a model folder" in result.stderr and "Traceback" not in result.stderr
