"""Raw text and a lexicon straight into train.py: masks drawn while training, fresh every epoch,
the same after an interrupt, and a validation set that never changes."""

import json
import re
import signal
import sys

import pytest

from conftest import ROOT, same_weights, tiny_run_arguments, wait_for, write_lines
from domainfocus.spans import normalize

# Runs train.py exactly as `python train.py ARGS` would, but writes every masked training example
# it reads (epoch, index, inputs) to $MASK_TRACE: what the model was shown, batch by batch.
TRACED_TRAIN = """
import json, os, runpy, sys
sys.path.insert(0, os.getcwd())
import domainfocus.data as data
trace = open(os.environ["MASK_TRACE"], "a", encoding="utf-8")
masked = data.MaskedExamples.masked
def traced(self, epoch, index):
    inputs, targets = masked(self, epoch, index)
    trace.write(json.dumps([epoch, index, inputs], ensure_ascii=False) + "\\n")
    trace.flush()
    return inputs, targets
data.MaskedExamples.masked = traced
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.fixture(scope="session")
def raw_data(tmp_path_factory):
    """330 distinct raw demo sentences (one document per line) and the demo lexicon."""
    folder = tmp_path_factory.mktemp("raw")
    distinct = {normalize(line): line for line in (ROOT / "demo" / "corpus.txt").read_text(encoding="utf-8").splitlines()}
    lines = list(distinct.values())[:330]
    return write_lines(folder / "corpus.txt", lines), ROOT / "demo" / "lexicon.txt"


def raw_arguments(raw_data, output_dir, **overrides):
    corpus, lexicon = raw_data
    return tiny_run_arguments((corpus, ""), output_dir, **{"LEXICON_FILE": lexicon, "VALID_RATIO": 0.1, **overrides})


def read_trace(path):
    return [tuple(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_resumed_epoch_shows_the_model_exactly_the_masks_of_an_uninterrupted_one(start_train, tmp_path, raw_data):
    settings = dict(MAX_STEPS=50, EVAL_STEPS=10, SAVE_STEPS=10, LOGGING_STEPS=3)  # 38 steps per epoch
    command = (sys.executable, "-c", TRACED_TRAIN)
    straight = start_train(raw_arguments(raw_data, tmp_path / "straight", **settings), command=command,
                           environment={"MASK_TRACE": str(tmp_path / "straight.trace")})
    assert straight.wait(timeout=300) == 0, (tmp_path / "console.log").read_text()[-3000:]
    output = tmp_path / "interrupted"
    process = start_train(raw_arguments(raw_data, output, **settings), command=command,
                          environment={"MASK_TRACE": str(tmp_path / "first.trace")})
    wait_for(tmp_path / "console.log", r"step 42/50")  # in the second epoch, between two checkpoints
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    resumed = start_train(raw_arguments(raw_data, output, **settings), command=command,
                          environment={"MASK_TRACE": str(tmp_path / "resumed.trace")})
    assert resumed.wait(timeout=300) == 0, (tmp_path / "console.log").read_text()[-3000:]
    assert "Resuming from" in (tmp_path / "console.log").read_text()

    seen_straight, seen_resumed = read_trace(tmp_path / "straight.trace"), read_trace(tmp_path / "resumed.trace")
    assert seen_resumed and {epoch for epoch, _, _ in seen_resumed} == {1}
    # The resumed run reads the very examples, in the very order, with the very masks, that the
    # uninterrupted run read from the same step on.
    assert seen_resumed == seen_straight[-len(seen_resumed):]
    assert same_weights(output / "latest", tmp_path / "straight" / "latest")
    # Masked in two DataLoader worker processes instead: the same examples, the same weights.
    workers = start_train(raw_arguments(raw_data, tmp_path / "workers", DATALOADER_WORKERS=2, **settings))
    assert workers.wait(timeout=300) == 0, (tmp_path / "console.log").read_text()[-3000:]
    assert same_weights(tmp_path / "workers" / "latest", tmp_path / "straight" / "latest")
    # Other masking settings are not resumed silently.
    changed = start_train(raw_arguments(raw_data, output, MASK_RATE=0.3, RESUME_CHANGES="refuse", **settings))
    assert changed.wait(timeout=300) == 2
    assert "MASK_RATE 0.22 -> 0.3" in (tmp_path / "console.log").read_text()
    # And the masks are fresh: most examples had other gaps in epoch 0 than in epoch 1.
    by_epoch = {(epoch, index): inputs for epoch, index, inputs in seen_straight}
    both = [index for epoch, index in by_epoch if epoch == 1 and (0, index) in by_epoch]
    changed = sum(by_epoch[0, index] != by_epoch[1, index] for index in both)
    assert len(both) > 100 and changed > 0.7 * len(both), (changed, len(both))


def test_static_masks_are_the_same_every_epoch_and_fresh_ones_differ(raw_data):
    """FRESH_MASKS is the one constant between the two, and the masks follow prepare.py's rules."""
    from domainfocus.data import MaskedExamples, build_masker, read_pieces
    from domainfocus.masking import MASKABLE_CHARACTER
    from train import default_config

    config = {**default_config(), "TRAIN_FILE": str(raw_data[0]), "LEXICON_FILE": str(raw_data[1])}
    pieces = read_pieces(config["TRAIN_FILE"], config, 0)["train"]
    static = MaskedExamples(pieces, build_masker(config), config["SEED"], fresh=False)
    fresh = MaskedExamples(pieces, build_masker(config), config["SEED"], fresh=True)
    size = len(pieces)
    assert all(static[index] == static[3 * size + index] for index in range(size))
    assert static[7] == fresh[7]  # epoch 0 is the same either way
    assert sum(fresh[index] != fresh[size + index] for index in range(size)) > 0.7 * size
    # In any epoch: punctuation is never masked, and every gap holds at least one maskable character.
    from domainfocus.spans import parse_spans

    for index in range(size):
        inputs, targets = fresh[5 * size + index]
        spans = [text for text in parse_spans(targets).values() if text]  # the closing sentinel holds none
        assert spans and len(spans) == inputs.count("<extra_id_")
        assert all(MASKABLE_CHARACTER.search(text) and not any(mark in text for mark in "，。；,.;")
                   for text in spans)


def test_validation_is_held_out_by_document_and_masked_once(tmp_path, raw_data):
    from domainfocus.data import load_raw, read_pieces
    from domainfocus.modeling import build_tiny_t5
    from train import default_config

    # Numbered, so that no two documents are alike (the demo sentences repeat).
    documents = [f"{number}: {line}" for number, line in enumerate(raw_data[0].read_text(encoding="utf-8").splitlines())]
    corpus = write_lines(tmp_path / "numbered.txt", documents)
    config = {**default_config(), "TRAIN_FILE": str(corpus), "LEXICON_FILE": str(raw_data[1]),
              "VALID_FILE": "", "VALID_RATIO": 0.2}
    tokenizer, _ = build_tiny_t5(config["TRAIN_FILE"], "inputs", "targets", 42)
    dataset, validation, counts, _ = load_raw(config, tokenizer, str(tmp_path / "a"))
    first = (tmp_path / "a" / "validation.jsonl").read_text(encoding="utf-8")
    # Another start, another masking setting for training: the same validation examples.
    load_raw({**config, "FRESH_MASKS": False}, tokenizer, str(tmp_path / "b"))
    assert (tmp_path / "b" / "validation.jsonl").read_text(encoding="utf-8") == first
    held_out = read_pieces(config["TRAIN_FILE"], {**config}, 0.2)["valid"]
    assert 30 < len(held_out) < 100 and len(first.splitlines()) == len(held_out)
    assert not set(held_out) & set(dataset.pieces) and set(held_out) | set(dataset.pieces) == set(documents)
    assert counts["examples"] == len(dataset) and 0.1 < counts["mask_rate"] < 0.6


def test_check_reports_the_masking(run_train, tmp_path, raw_data, small_data):
    raw = run_train(["--check", *raw_arguments(raw_data, tmp_path / "raw")])
    assert raw.returncode == 0, raw.stderr[-2000:]
    record = json.loads(raw.stdout.strip().splitlines()[-1])
    assert record["masking"] == "fresh" and record["lexicon_terms"] == 96
    assert 290 <= record["examples_per_epoch"] < 330 and 0.1 < record["expected_mask_rate"] < 0.6
    assert 0.5 < record["lexicon_coverage"] <= 1 and "new every epoch" in raw.stdout
    assert not (tmp_path / "raw").exists()  # --check writes nothing
    static = run_train(["--check", *raw_arguments(raw_data, tmp_path / "raw", FRESH_MASKS=False)])
    assert json.loads(static.stdout.strip().splitlines()[-1])["masking"] == "static"
    prepared = run_train(["--check", *tiny_run_arguments(small_data, tmp_path / "prepared")])
    record = json.loads(prepared.stdout.strip().splitlines()[-1])
    assert record["masking"] == "prepared" and record["examples_per_epoch"] == 300


def test_truncated_masked_examples_are_counted_and_reported(run_train, tmp_path, raw_data):
    """Also when a data-loader worker process draws and tokenizes them."""
    result = run_train(raw_arguments(raw_data, tmp_path / "out", MAX_INPUT_LENGTH=24, MAX_STEPS=4, EVAL_STEPS=4,
                                     SAVE_STEPS=4, GEN_EVAL_SAMPLES=2, DATALOADER_WORKERS=1))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counted = re.search(r"(\d+) masked training examples of this run were truncated to MAX_INPUT_LENGTH=24", result.stdout)
    assert counted and 0 < int(counted.group(1)) <= 4 * 8


@pytest.mark.parametrize("overrides, message", [
    ({"LEXICON_FILE": ""}, "is raw text: set LEXICON_FILE"),
    ({"LEXICON_FILE": "missing-terms.txt"}, "no such lexicon file"),
    ({"VALID_FILE": "missing.txt"}, "(set by VALID_FILE) does not exist"),
    ({"MASK_RATE": 1.5}, "MASK_RATE=1.5: must lie between 0 and 1"),
    ({"DOCUMENTS": "pages"}, "DOCUMENTS='pages': choose one of lines, paragraphs"),
])
def test_a_bad_masking_setting_is_one_line_and_exit_2(run_train, tmp_path, raw_data, overrides, message):
    result = run_train(raw_arguments(raw_data, tmp_path / "out", **overrides))
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_lexicon_with_prepared_data_is_refused(run_train, tmp_path, small_data, raw_data):
    result = run_train(tiny_run_arguments(small_data, tmp_path / "out", LEXICON_FILE=raw_data[1]))
    assert result.returncode == 2 and "holds prepared examples" in result.stderr


def test_masking_defaults_match_prepare_py():
    """One set of rules: train.py's masking constants start where prepare.py's options do."""
    from prepare import parse_options
    from train import default_config

    options, config = parse_options(["--text", "t", "--lexicon", "l", "--out", "o"]), default_config()
    for option, constant in (("term_mask_prob", "TERM_MASK_PROB"), ("hard_term_mask_prob", "HARD_TERM_MASK_PROB"),
                             ("mask_rate", "MASK_RATE"), ("max_span", "MAX_SPAN"), ("max_chars", "MAX_CHARS"),
                             ("noise", "NOISE"), ("valid_ratio", "VALID_RATIO"), ("documents", "DOCUMENTS"),
                             ("text_field", "TEXT_FIELD"), ("group_field", "GROUP_FIELD")):
        assert getattr(options, option) == config[constant], constant
