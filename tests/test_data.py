"""Bad training data is reported with file, line and fix, before any model is loaded."""

import json

import pytest

from conftest import tiny_run_arguments
from domainfocus.data import DataError, check_jsonl, check_sentinels

GOOD = {"inputs": "患者出现<extra_id_0>症状。", "targets": "<extra_id_0>胸痛<extra_id_1>"}


def write(path, lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n" for line in lines))
    return str(path)


BAD_FILES = {
    "invalid JSON": ([json.dumps(GOOD), "{not json"], ":2: invalid JSON"),
    "not an object": ([json.dumps(GOOD), json.dumps(["a", "b"])], ":2: expected a JSON object"),
    "missing column": ([json.dumps({"inputs": "x"})], ':1: no "targets" field'),
    "non-string value": ([json.dumps({"inputs": "x", "targets": 3})], ':1: "targets" must be a string'),
    "empty target": ([json.dumps({"inputs": "x", "targets": "  "})], ':1: "targets" is empty'),
    "empty input": ([json.dumps({"inputs": "", "targets": "x"})], ':1: "inputs" is empty'),
    "not UTF-8": ([json.dumps(GOOD), "患者".encode("gbk")], ":2: not UTF-8"),
    "sentinels out of order": ([json.dumps({"inputs": "a<extra_id_1>b<extra_id_0>", "targets": "<extra_id_0>x"})],
                               ":1: sentinels in the inputs are not numbered"),
    "targets do not match": ([json.dumps({"inputs": "a<extra_id_0>b", "targets": "<extra_id_3>x"})],
                             ":1: the targets' sentinels"),
    "only blank lines": (["", "   "], "holds no examples"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_names_file_and_line(tmp_path, case):
    lines, expected = BAD_FILES[case]
    path = write(tmp_path / "train.jsonl", lines)
    with pytest.raises(DataError) as error:
        check_jsonl(path, "inputs", "targets", "TRAIN_FILE")
    message = str(error.value)
    assert expected in message and path in message and "\n" not in message


def test_missing_file_and_folder_name_the_constant(tmp_path):
    with pytest.raises(DataError, match=r"set by VALID_FILE\) does not exist"):
        check_jsonl(str(tmp_path / "nope.jsonl"), "inputs", "targets", "VALID_FILE")
    with pytest.raises(DataError, match="is a folder"):
        check_jsonl(str(tmp_path), "inputs", "targets", "TRAIN_FILE")


def test_good_files_count_examples_and_allow_plain_text_pairs(tmp_path):
    plain = {"inputs": "患者出現胸痛症伏。", "targets": "患者出现胸痛症状。"}
    path = write(tmp_path / "train.jsonl", [json.dumps(GOOD, ensure_ascii=False), "", json.dumps(plain)])
    assert check_jsonl(path, "inputs", "targets", "TRAIN_FILE") == 2


def test_sentinel_rules():
    assert check_sentinels("a<extra_id_0>b<extra_id_1>", "<extra_id_0>x<extra_id_1>y<extra_id_2>") is None
    assert check_sentinels("a<extra_id_0>b<extra_id_1>", "<extra_id_0>x<extra_id_1>y") is None
    assert "closing sentinel" in check_sentinels("a<extra_id_0>", "<extra_id_0>x<extra_id_5>")
    assert check_sentinels("a<extra_id_0>", "<extra_id_0>x<extra_id_1>y<extra_id_2>") is not None


def test_bad_data_exits_2_before_loading_a_model_and_writes_nothing(run_train, tmp_path, small_data):
    bad = write(tmp_path / "bad.jsonl", [json.dumps(GOOD), "{broken"])
    output = tmp_path / "out"
    result = run_train(["--demo", f"--TRAIN_FILE={bad}", f"--VALID_FILE={small_data[1]}", f"--OUTPUT_DIR={output}"],
                       timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: {bad}:2: invalid JSON")
    assert "Traceback" not in result.stderr + result.stdout
    assert not output.exists()


def test_every_input_too_long_is_an_error(run_train, tmp_path, small_data):
    output = tmp_path / "out"
    result = run_train(["--demo", f"--TRAIN_FILE={small_data[0]}", f"--VALID_FILE={small_data[1]}",
                        f"--OUTPUT_DIR={output}", "--MAX_INPUT_LENGTH=3"], timeout=180)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "every input is longer than MAX_INPUT_LENGTH=3" in result.stderr
    written = [path.name for path in output.iterdir()] if output.exists() else []
    assert not [name for name in written if name.startswith("checkpoint") or name in ("best", "latest")]


def snapshot(folder):
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*"))}


def bad_input_case(case, tmp_path, small_data, finished_run):
    """(command-line overrides, text the one-line error must contain) for each kind of bad input."""
    if case in BAD_FILES or case == "empty file":
        lines, expected = BAD_FILES.get(case, ([], "holds no examples"))
        path = write(tmp_path / "train.jsonl", lines) if lines else str(tmp_path / "train.jsonl")
        if not lines:
            (tmp_path / "train.jsonl").write_bytes(b"")
        return {"TRAIN_FILE": path}, expected.split(": ", 1)[-1]  # the message after "path:line: "
    no_tokenizer = tmp_path / "model-without-tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text("{}")
    damaged = tmp_path / "checkpoint-7"
    damaged.mkdir()
    output_file = tmp_path / "output-file"
    output_file.write_text("not a folder")
    return {
        "missing file": ({"TRAIN_FILE": tmp_path / "missing.jsonl"}, "does not exist"),
        "folder instead of file": ({"TRAIN_FILE": tmp_path}, "is a folder"),
        "unknown constant": ({"EVAL_STEP": 5}, "did you mean EVAL_STEPS?"),
        "badly typed constant": ({"EVAL_STEPS": "ten"}, "expected int"),
        "invalid combination": ({"EVAL_STEPS": 10, "SAVE_STEPS": 15}, "not a multiple of EVAL_STEPS"),
        "model folder missing": ({"MODEL_NAME_OR_PATH": tmp_path / "no-model"}, "no such folder"),
        "model folder without tokenizer": ({"MODEL_NAME_OR_PATH": no_tokenizer}, "has no tokenizer"),
        "OUTPUT_DIR is a file": ({"OUTPUT_DIR": output_file}, "is a file"),
        "damaged RESUME checkpoint": ({"RESUME": damaged}, "cannot resume from it"),
    }[case]


@pytest.mark.parametrize("case", sorted(BAD_FILES) + ["empty file", "missing file", "folder instead of file",
                                                      "unknown constant", "badly typed constant",
                                                      "invalid combination", "model folder missing",
                                                      "model folder without tokenizer", "OUTPUT_DIR is a file",
                                                      "damaged RESUME checkpoint"])
def test_bad_input_is_one_line_exit_2_and_leaves_the_run_untouched(case, run_train, tmp_path, small_data,
                                                                     finished_run):
    overrides, expected = bad_input_case(case, tmp_path, small_data, finished_run)
    output = finished_run[0]  # a finished run: not one file of it may change
    before = snapshot(output)
    result = run_train(tiny_run_arguments(small_data, output, **overrides), timeout=60)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    named = overrides.get("TRAIN_FILE") or overrides.get("MODEL_NAME_OR_PATH") or overrides.get("OUTPUT_DIR")
    assert named is None or str(named) in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert snapshot(output) == before


def test_a_file_that_passed_is_not_parsed_again_until_it_changes(tmp_path, monkeypatch):
    import domainfocus.data as data

    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    path = write(tmp_path / "train.jsonl", [json.dumps(GOOD)])
    calls = []
    monkeypatch.setattr(data, "check_jsonl", lambda *arguments: calls.append(arguments))
    data.check_jsonl_once(path, "inputs", "targets", "TRAIN_FILE")
    data.check_jsonl_once(path, "inputs", "targets", "TRAIN_FILE")
    assert len(calls) == 1
    write(tmp_path / "train.jsonl", [json.dumps(GOOD), "{broken"])  # changed: size and time differ
    monkeypatch.undo()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    with pytest.raises(DataError, match=":2: invalid JSON"):
        data.check_jsonl_once(path, "inputs", "targets", "TRAIN_FILE")
