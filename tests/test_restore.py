"""Restoration a reader can trust: no loss hidden, exact lengths, whole documents, confidence, lexicon,
one decoding definition shared with training, and restore.py as a pipeline tool."""

import json
import math
import re
import signal
import subprocess
import sys
import time
import unicodedata

import pytest

from conftest import ROOT, offline_environment
from domainfocus.spans import SENTINEL, fill_spans, parse_spans

LINE = "患者因□□□□□□入院，首选检查为□□□，给予□□□□治疗。"


def restore(hf_home, *arguments, stdin=None):
    return subprocess.run([sys.executable, str(ROOT / "restore.py"), *map(str, arguments)], capture_output=True,
                          text=True, timeout=300, env=offline_environment(hf_home), input=stdin)


def records_of(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def restorer(finished_run):
    from domainfocus.restoration import Restorer

    return Restorer.load(str(finished_run[0] / "best"), device="cpu")


def characters(text):
    return len("".join(text.split()))


def forced_generation(restorer, span_texts):
    """A stand-in for model.generate that 'generates' these span texts (None: stop before that span)."""
    import torch

    table = restorer.table
    tokens = [restorer.model.config.decoder_start_token_id]
    for number, text in enumerate(span_texts):
        if text is None:
            tokens.append(int(table.sentinel_ids[number]))  # closes the span before, opens this one
            break
        tokens += [int(table.sentinel_ids[number])] + restorer.span_tokens([text])[0]
    else:
        tokens.append(int(table.sentinel_ids[len(span_texts)]))
    tokens.append(restorer.tokenizer.eos_token_id)

    def generate(attention_mask=None, num_return_sequences=1, **kwargs):
        return torch.tensor([tokens] * (attention_mask.shape[0] * num_return_sequences))

    return generate


# --- 1. never hide a loss ----------------------------------------------------------------------

def test_a_model_that_generates_nothing_leaves_every_marker_and_the_context_intact(restorer, monkeypatch):
    restorer.restore(["x□"])  # builds the token table
    monkeypatch.setattr(restorer.model, "generate", forced_generation(restorer, [None]))
    texts = [LINE, "Diagnosis: □□□□. Plan: □□□□□□□.", "no mask here"]
    results = restorer.restore(texts)
    assert [result["restored"] for result in results] == texts
    assert [len(result["spans"]) for result in results] == [3, 2, 0]
    for result in results[:2]:
        for span in result["spans"]:
            assert {key: span[key] for key in ("text", "confidence", "alternatives", "review")} == {
                "text": "", "confidence": None, "alternatives": [], "review": False}
            # Annotation tools find the marker where it was, in the input and in the output.
            assert result["inputs"][span["input_start"]:span["input_end"]] == "□" * span["length"]
            assert result["restored"][span["start"]:span["end"]] == "□" * span["length"]


def test_a_span_the_model_did_not_reach_stays_marked_and_the_one_it_did_is_filled(restorer, monkeypatch):
    restorer.restore(["x□"])
    monkeypatch.setattr(restorer.model, "generate", forced_generation(restorer, ["患", None]))
    [result] = restorer.restore(["予阿□西林□治疗"])
    assert result["restored"] == "予阿患西林□治疗"
    assert [span["text"] for span in result["spans"]] == ["患", ""]
    assert result["spans"][1]["confidence"] is None and 0 <= result["spans"][0]["confidence"] <= 1


def test_the_summary_counts_spans_restored_left_marked_and_flagged(finished_run, tmp_path, hf_home):
    (tmp_path / "damaged.txt").write_text(LINE + "\n" + "no mask\n", encoding="utf-8")
    result = restore(hf_home, "--model", finished_run[0] / "best", "--input", tmp_path / "damaged.txt",
                     "--output", tmp_path / "out.jsonl", "--review-below", "1.0")
    assert result.returncode == 0, result.stderr[-3000:]
    records = records_of(tmp_path / "out.jsonl")
    assert "3 spans restored, 0 left marked, 3 flagged for review" in result.stderr
    # Flagged spans keep their restoration, visibly marked for review.
    assert records[0]["restored"].count("⟦") == 3 and all(span["review"] for span in records[0]["spans"])
    assert records[1]["restored"] == "no mask" and records[1]["spans"] == []


# --- 2. length-aware restoration -----------------------------------------------------------------

def test_each_span_gets_exactly_as_many_characters_as_it_has_markers(finished_run, tmp_path, hf_home):
    lines = [LINE, "Diagnosis: □□□□□□. Plan: □□□□□□□□□□□□□□□□□□ daily.", "□心电图□□□"]
    (tmp_path / "damaged.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = restore(hf_home, "--model", finished_run[0] / "best", "--input", tmp_path / "damaged.txt",
                     "--output", tmp_path / "out.jsonl")
    assert result.returncode == 0, result.stderr[-3000:]
    for line, record in zip(lines, records_of(tmp_path / "out.jsonl"), strict=True):
        runs = re.findall("□+", line)
        assert [characters(span["text"]) for span in record["spans"]] == [len(run) for run in runs]
        context = re.split("□+", line)
        rebuilt = context[0] + "".join(span["text"] + after for span, after in zip(record["spans"], context[1:]))
        assert record["restored"] == rebuilt  # the undamaged text, character for character


def test_jsonl_lengths_are_honoured(restorer):
    from domainfocus.damage import from_sentinels

    document = from_sentinels("患者因<extra_id_0>入院，给予<extra_id_1>治疗。", [2, 5])
    [result] = restorer.restore_documents([document])
    assert [characters(span["text"]) for span in result["spans"]] == [2, 5]


def test_a_known_length_masks_what_would_overshoot_and_any_length_does_not(restorer):
    import torch

    from domainfocus.constraint import SpanConstraint, TokenTable
    from domainfocus.damage import from_markers

    assert [span.length for span in from_markers("患者因□入院，给予□□治疗。", any_length=True).spans] == [None, None]
    table = TokenTable(restorer.tokenizer, restorer.model.config.vocab_size)
    one = next(token for token in range(len(restorer.tokenizer))
               if table.characters[token] == 1 and token != restorer.tokenizer.unk_token_id)
    two = next(token for token in range(len(restorer.tokenizer)) if table.characters[token] == 2)
    start, opening, closing = 0, int(table.sentinel_ids[0]), int(table.sentinel_ids[1])
    written = torch.tensor([[start, opening, one], [start, opening, one]])  # one character of the span so far
    scores = SpanConstraint(table, [[2], [None]], num_beams=1)(written, torch.zeros(2, table.characters.shape[0]))
    known, free = scores.isfinite()
    assert known[one] and not known[two] and not known[closing]  # exactly one more character, then it closes
    assert free[one] and free[two] and free[closing] and not free[table.eos]  # any length; never end inside a span
    full = SpanConstraint(table, [[1]], num_beams=1)(written[:1], torch.zeros(1, table.characters.shape[0]))
    assert full.isfinite()[0].nonzero().flatten().tolist() == [closing]  # full: only the closing sentinel


def test_bad_lengths_in_jsonl_are_a_one_line_error(finished_run, tmp_path, hf_home):
    (tmp_path / "in.jsonl").write_text(json.dumps({"inputs": "a<extra_id_0>b", "lengths": [0]}) + "\n")
    result = restore(hf_home, "--model", finished_run[0] / "best", "--input", tmp_path / "in.jsonl",
                     "--output", tmp_path / "out.jsonl")
    assert result.returncode == 2 and "in.jsonl:1" in result.stderr and "lengths" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out.jsonl").exists()


# --- 3. whole documents of any length ----------------------------------------------------------------

def test_a_3000_character_line_with_40_lost_spans_gets_all_40_back_each_with_exactly_its_length(restorer):
    from domainfocus.damage import from_markers
    from domainfocus.spans import SENTENCE_END
    from domainfocus.windows import cut_windows

    sentences = [json.loads(line)["inputs"] for line in (ROOT / "demo" / "valid.jsonl").read_text().splitlines()]
    plain = SENTINEL.sub("", " ".join(sentences))[:3000]
    positions = sorted(range(60, 2950, 72))[:40]
    pieces, previous = [], 0
    for number, position in enumerate(positions):
        pieces += [plain[previous:position], "□" * (1 + number % 6)]
        previous = position + 1 + number % 6
    pieces.append(plain[previous:])
    line = "".join(pieces)
    assert len(line) >= 3000 and len(re.findall("□+", line)) == 40
    document = from_markers(line)
    windows = cut_windows(document, restorer.tokenizer, restorer.decoding)
    assert len(windows) > 3  # far longer than the model's 128-token input
    assert all(len(restorer.tokenizer(window.text)["input_ids"]) <= restorer.decoding.max_input_length
               for window in windows)
    assert sum(len(window.spans) for window in windows) == 40  # each span restored once
    size = restorer.decoding.window_tokens
    for window in windows:  # whole sentences, about the size of a training example, never a fragment
        markers = iter(span.marker for span in window.spans)
        text = SENTINEL.sub(lambda match: next(markers), window.text)
        start = line.index(text)
        assert start == 0 or SENTENCE_END.match(line, start - 1) or SENTENCE_END.match(line, start - 2)
        assert start + len(text) == len(line) or SENTENCE_END.search(text.rstrip()[-1:] + " ")
        assert len(restorer.tokenizer(window.text)["input_ids"]) <= size or len(SENTENCE_END.findall(text)) <= 1
    [result] = restorer.restore([line])
    assert len(result["spans"]) == 40
    assert [characters(span["text"]) for span in result["spans"]] == [1 + number % 6 for number in range(40)]
    context = re.split("□+", line)
    assert result["restored"] == context[0] + "".join(
        span["text"] + after for span, after in zip(result["spans"], context[1:]))


def test_a_full_stop_right_before_a_gap_does_not_end_the_sentence(restorer):
    """`38.□` lost its decimals: the window must keep the number whole, not cut it at the point."""
    from domainfocus.damage import from_markers
    from domainfocus.restoration import Decoding
    from domainfocus.windows import cut_windows

    line = "患者因胸痛入院，予阿司匹林口服。查体：体温3□.□℃，心率□□次/分，血压正常。复查心电图未见异常。"
    decoding = Decoding(max_input_length=128, whole_tokens=12, window_tokens=24)
    windows = cut_windows(from_markers(line), restorer.tokenizer, decoding)
    [window] = [window for window in windows if len(window.spans) >= 2]
    assert "体温3<extra_id_0>.<extra_id_1>℃" in window.text.replace("°C", "℃")


def test_a_line_with_more_gaps_than_sentinels_is_restored_whole(restorer):
    line = "，".join(["心电图□"] * 150) + "。"
    [result] = restorer.restore([line])
    assert len(result["spans"]) == 150 and all(characters(span["text"]) == 1 for span in result["spans"])
    assert "□" not in result["restored"] and result["restored"].count("心电图") >= 150


def test_paragraphs_are_one_document_and_keep_their_line_breaks(finished_run, tmp_path, hf_home):
    text = "患者因□□□□□□\n入院，首选检查为□□□。\n\n第二段□□治疗。\n"
    (tmp_path / "ocr.txt").write_text(text, encoding="utf-8")
    result = restore(hf_home, "--model", finished_run[0] / "best", "--input", tmp_path / "ocr.txt",
                     "--output", tmp_path / "out.jsonl", "--documents", "paragraphs")
    assert result.returncode == 0, result.stderr[-3000:]
    records = records_of(tmp_path / "out.jsonl")
    assert [record["inputs"] for record in records] == ["患者因□□□□□□\n入院，首选检查为□□□。", "第二段□□治疗。"]
    assert records[0]["restored"].startswith("患者因") and "\n入院，首选检查为" in records[0]["restored"]
    assert len(records[0]["spans"]) == 2


def test_a_text_without_gaps_is_rewritten_in_sentence_windows_and_a_cut_rewrite_is_flagged(restorer, monkeypatch):
    """Text-to-text inputs: a long text is cut at sentence ends to fit the model's input, never
    truncated; an output that the token budget ended before </s> is flagged, not passed as whole."""
    import torch

    from domainfocus.damage import from_sentinels
    from domainfocus.spans import SENTENCE_END
    from domainfocus.windows import Cutter, plain_pieces

    lines = (ROOT / "demo" / "corpus.txt").read_text(encoding="utf-8").splitlines()[:60]
    long_text = "\n".join(" ".join(lines[start:start + 3]) for start in range(0, 60, 3))  # paragraphs of three
    pieces = plain_pieces(long_text, Cutter(restorer.tokenizer, restorer.decoding))
    assert len(pieces) > 1 and "".join(before + piece for before, piece in pieces) == long_text
    assert all(len(restorer.tokenizer(piece)["input_ids"]) <= restorer.decoding.max_input_length for _, piece in pieces)
    assert all(SENTENCE_END.match(piece[-1] + " ") for _, piece in pieces)  # whole sentences
    echoed = restorer.model.generate  # a model that writes its input back: the line breaks come back too
    monkeypatch.setattr(restorer.model, "generate", lambda input_ids=None, **kwargs: torch.cat(
        [torch.zeros_like(input_ids[:, :1]), input_ids], dim=1))
    [result] = restorer.restore_documents([from_sentinels(long_text)])
    paragraphs = [unicodedata.normalize("NFKC", " ".join(lines[start:start + 3])) for start in range(0, 60, 3)]
    assert result["restored"].split("\n") == paragraphs  # in the tokenizer's normal form
    assert not result["review"]
    monkeypatch.setattr(restorer.model, "generate", echoed)
    budget = restorer.decoding.max_new_tokens
    endless = restorer.tokenizer("心电图" * 40, add_special_tokens=False)["input_ids"][:budget]
    monkeypatch.setattr(restorer.model, "generate", lambda attention_mask=None, **kwargs: torch.tensor(
        [[0] + endless] * attention_mask.shape[0]))
    [result] = restorer.restore_documents([from_sentinels("患者出現胸痛症伏。")])
    assert result["review"] and "max_new_tokens" in result["reason"] and result["restored"].startswith("心电图")


# --- 4. confidence and alternatives --------------------------------------------------------------

def test_confidence_is_the_models_probability_of_the_span_and_its_closing_sentinel(restorer):
    import torch

    from domainfocus.restoration import Decoding, Restorer

    beams = Restorer(restorer.model, restorer.tokenizer, Decoding(num_beams=4, max_input_length=128,
                                                                  max_new_tokens=64))
    chosen = []  # the tokens the shown text was written with (a text may be written in more than one way)
    display = beams.display
    beams.display = lambda candidate, part: chosen.append(list(candidate.tokens)) or display(candidate, part)
    [result] = beams.restore(["患者因□□□□□□入院。"], alternatives=3)
    [span] = result["spans"]
    # The same probability computed here by hand: teacher-forced, softmax over the whole vocabulary.
    tokens = chosen[0]
    assert beams.table.text(tokens).strip() == span["text"]
    table = beams.table
    decoder = [restorer.model.config.decoder_start_token_id, int(table.sentinel_ids[0])] + tokens
    labels = decoder[1:] + [int(table.sentinel_ids[1])]
    encoded = restorer.tokenizer(["患者因<extra_id_0>入院。"], return_tensors="pt")
    with torch.inference_mode():
        logits = restorer.model(**encoded, decoder_input_ids=torch.tensor([decoder])).logits[0]
    log_probs = torch.log_softmax(logits, dim=-1)[torch.arange(len(labels)), torch.tensor(labels)]
    assert span["confidence"] == pytest.approx(math.exp(float(log_probs[1:].sum())), rel=1e-3)
    assert len(span["alternatives"]) <= 3 and all(characters(a["text"]) == 6 for a in span["alternatives"])
    shown = [span["confidence"]] + [alternative["confidence"] for alternative in span["alternatives"]]
    assert shown == sorted(shown, reverse=True) and all(0 <= value <= 1 for value in shown)


# --- 5. lexicon-aware restoration ------------------------------------------------------------------

def test_a_lexicon_term_the_model_prefers_is_chosen_and_one_that_does_not_fit_never_is(restorer, monkeypatch):
    from domainfocus.damage import from_sentinels
    from domainfocus.restoration import Restorer

    text = "<extra_id_0>患者常表现为胸骨后压榨性疼痛，首选检查为心电图。"
    plain = Restorer(restorer.model, restorer.tokenizer, restorer.decoding)
    plain.restore(["x□"])
    monkeypatch.setattr(plain.model, "generate", forced_generation(plain, ["的的的的的的"]))
    [generated] = plain.restore_documents([from_sentinels(text, [6])])
    assert generated["spans"][0]["text"] == "的的的的的的"
    terms = ["急性心肌梗死", "类风湿关节炎", "心电图", "社区获得性肺炎"]
    with_lexicon = Restorer(restorer.model, restorer.tokenizer, restorer.decoding, lexicon=terms)
    with_lexicon.table = plain.table
    [result] = with_lexicon.restore_documents([from_sentinels(text, [6])], alternatives=5)
    [span] = result["spans"]
    candidates = {span["text"]: span["confidence"],
                  **{alternative["text"]: alternative["confidence"] for alternative in span["alternatives"]}}
    # The six-character terms were scored beside the generated text; the likeliest of all is chosen.
    assert {"急性心肌梗死", "类风湿关节炎", "的的的的的的"} <= set(candidates)
    assert "心电图" not in candidates and "社区获得性肺炎" not in candidates  # wrong length: never scored
    assert span["confidence"] == max(candidates.values())
    assert candidates["急性心肌梗死"] > generated["spans"][0]["confidence"]
    assert span["text"] != "的的的的的的"


def test_a_lexicon_bonus_lets_a_term_win_shows_the_models_own_confidence_and_says_so(restorer):
    """The prior on lexicon terms decides the choice only: the confidence shown is still the model's
    probability, and the span says which likelier text the term was chosen over."""
    import dataclasses
    import math

    from domainfocus.damage import from_sentinels
    from domainfocus.restoration import Restorer

    text = "<extra_id_0>患者常表现为胸骨后压榨性疼痛，首选检查为心电图。"
    [alone] = Restorer(restorer.model, restorer.tokenizer, restorer.decoding).restore_documents(
        [from_sentinels(text, [6])], alternatives=3)
    [span] = alone["spans"]
    runner_up = span["alternatives"][0]  # a text the model finds less likely than its choice
    assert runner_up["confidence"] < span["confidence"]

    def restored_with(bonus, terms=(runner_up["text"],)):
        decoding = dataclasses.replace(restorer.decoding, lexicon_bonus=bonus)
        lexicon = Restorer(restorer.model, restorer.tokenizer, decoding, lexicon=terms)
        return lexicon.restore_documents([from_sentinels(text, [6])], alternatives=3)[0]["spans"][0]

    # A term no beam wrote, far less likely than every beam's text, is still found when its bonus can win.
    unlikely = restored_with(100.0, ["阿莫西林阿莫"])
    assert unlikely["text"] == "阿莫西林阿莫" and unlikely["confidence"] < runner_up["confidence"]

    assert restored_with(0.0)["text"] == span["text"]  # no bonus: the model alone decides
    # The term's own probability (the model's, for the term as the tokenizer writes it), shown once it wins:
    term = restored_with(100.0)["confidence"]
    assert term < span["confidence"]
    needed = math.log(span["confidence"] / term)
    assert restored_with(needed * 0.9)["text"] == span["text"]
    chosen = restored_with(needed * 1.1)
    assert chosen["text"] == runner_up["text"]
    assert chosen["confidence"] == pytest.approx(term, rel=1e-3)  # never the boosted score
    assert chosen["review"] and repr(span["text"]) in chosen["reason"]
    assert chosen["alternatives"][0]["text"] == span["text"]


def test_the_lexicon_bonus_is_tuned_on_validation_and_saved_with_the_model(finished_run, small_data, tmp_path,
                                                                           hf_home):
    """restore.py --tune-lexicon-bonus scores each bonus on the validation given, keeps the best in the
    model's generation_config.json, and later restorations use it."""
    import shutil

    from domainfocus.restoration import Restorer

    model = tmp_path / "best"
    shutil.copytree(finished_run[0] / "best", model)
    subset = tmp_path / "subset.jsonl"
    subset.write_text("\n".join(small_data[1].read_text(encoding="utf-8").splitlines()[:12]) + "\n", encoding="utf-8")
    result = restore(hf_home, "--model", model, "--input", subset, "--output", tmp_path / "out.jsonl", "--lexicon",
                     ROOT / "demo" / "lexicon.txt", "--tune-lexicon-bonus")
    assert result.returncode == 0, result.stderr[-3000:]
    scores = dict(re.findall(r"lexicon bonus ([\d.]+): span_accuracy ([\d.]+)", result.stderr))
    assert list(scores) == ["0", "0.5", "1", "2", "4", "8"]
    best = max(scores, key=lambda bonus: (float(scores[bonus]), -float(bonus)))
    saved = json.loads((model / "generation_config.json").read_text())
    assert saved["lexicon_bonus"] == float(best) and saved["num_beams"] == 4  # the other settings kept
    assert Restorer.load(str(model), device="cpu").decoding.lexicon_bonus == float(best)
    assert not [path for path in model.iterdir() if path.name.startswith("tmp")]  # nothing half-written left
    refused = restore(hf_home, "--model", model, "--input", subset, "--output", tmp_path / "o.jsonl",
                      "--tune-lexicon-bonus")
    assert refused.returncode == 2 and "needs --lexicon" in refused.stderr


# --- 6. one decoding definition --------------------------------------------------------------------

def test_jsonl_with_targets_is_restored_and_scored_exactly_like_the_training_evaluation(finished_run, small_data,
                                                                                         tmp_path, hf_home):
    output_dir, _ = finished_run
    saved = json.loads((output_dir / "best" / "generation_config.json").read_text())
    assert (saved["num_beams"], saved["max_input_length"], saved["max_new_tokens"]) == (4, 128, 64)
    from domainfocus.restoration import Decoding, Restorer

    restorer = Restorer.load(str(output_dir / "best"), device="cpu")
    # Windows of long documents are sized like the training inputs: the longest is restored whole.
    inputs = [json.loads(line)["inputs"] for line in small_data[0].read_text(encoding="utf-8").splitlines()]
    tokens = [len(ids) for ids in restorer.tokenizer(inputs)["input_ids"]]
    assert restorer.decoding == Decoding(num_beams=4, length_aware=True, max_input_length=128, max_new_tokens=64,
                                         whole_tokens=max(tokens), window_tokens=math.ceil(sum(tokens) / len(tokens)))
    # The same examples that the training run scored at each evaluation (GEN_EVAL_SAMPLES=16).
    subset = tmp_path / "subset.jsonl"
    subset.write_text("\n".join(small_data[1].read_text(encoding="utf-8").splitlines()[:16]) + "\n", encoding="utf-8")
    result = restore(hf_home, "--model", output_dir / "latest", "--input", subset, "--output",
                     tmp_path / "restored.jsonl")
    assert result.returncode == 0, result.stderr[-3000:]
    records = records_of(tmp_path / "restored.jsonl")
    originals = [json.loads(line) for line in subset.read_text(encoding="utf-8").splitlines()]
    assert len(records) == len(originals) == 16
    for record, original in zip(records, originals):
        assert record["inputs"] == original["inputs"] and record["targets"] == original["targets"]
        assert record["restored"] == fill_spans(record["inputs"], parse_spans(record["prediction"]))
        assert len(record["spans"]) == len(SENTINEL.findall(record["inputs"]))
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    logged = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    at_end = [entry for entry in logged if entry.get("step") == 20 and "eval_span_accuracy" in entry][-1]
    for name in ("span_accuracy", "char_accuracy", "exact_match"):
        assert metrics[name] == pytest.approx(at_end[f"eval_{name}"], abs=1e-4)
    assert metrics["examples"] == 16


# --- 7. usable from a pipeline ---------------------------------------------------------------------

def test_csv_tsv_and_standard_input_and_output(finished_run, tmp_path, hf_home):
    model = finished_run[0] / "best"
    (tmp_path / "notes.csv").write_text("id,note\n1,\"患者因□□入院，给予□治疗。\"\n2,无缺损\n", encoding="utf-8")
    result = restore(hf_home, "--model", model, "--input", tmp_path / "notes.csv", "--text-column", "note",
                     "--output", tmp_path / "out.jsonl")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [len(record["spans"]) for record in records_of(tmp_path / "out.jsonl")] == [2, 0]
    (tmp_path / "notes.tsv").write_text("note\tid\n予阿□□□□治疗。\t1\n", encoding="utf-8")
    result = restore(hf_home, "--model", model, "--input", tmp_path / "notes.tsv", "--text-column", "note",
                     "--output", "-")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[0])["inputs"] == "予阿□□□□治疗。"
    result = restore(hf_home, "--model", model, "--input", "-", "--output", "-", stdin=LINE + "\n")
    assert result.returncode == 0 and len(json.loads(result.stdout.splitlines()[0])["spans"]) == 3


def test_output_lines_answer_input_lines_keep_the_inputs_id_and_locate_every_span(finished_run, tmp_path, hf_home):
    model = finished_run[0] / "best"
    lines = [LINE, "", "无缺损的一行。", "   ", "予阿□□□□治疗，体温□□□□□。"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = restore(hf_home, "--model", model, "--input", tmp_path / "in.txt", "--output", tmp_path / "out.jsonl")
    assert result.returncode == 0, result.stderr[-3000:]
    records = records_of(tmp_path / "out.jsonl")
    assert [record["inputs"] for record in records] == lines  # blank lines too: line N answers line N
    assert records[1] == {"inputs": "", "restored": "", "spans": []}
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in (
        {"id": "ward3-017", "ward": "3", "inputs": "患者因<extra_id_0>入院。", "lengths": [4]},
        {"inputs": "给予<extra_id_0>治疗，<extra_id_1>。", "lengths": [4, None], "id": 18})), encoding="utf-8")
    for keep, expected in ((None, [{"id": "ward3-017"}, {"id": 18}]),
                           ("ward", [{"id": "ward3-017", "ward": "3"}, {"id": 18}])):  # id is always kept
        result = restore(hf_home, "--model", model, "--input", tmp_path / "in.jsonl", "--output",
                         tmp_path / "out.jsonl", *(["--keep-fields", keep] if keep else []))
        assert result.returncode == 0, result.stderr[-3000:]
        with_ids = records_of(tmp_path / "out.jsonl")
        assert [{key: record[key] for key in record if key in ("id", "ward")} for record in with_ids] == expected
        assert list(with_ids[0])[:len(expected[0])] == list(expected[0])  # first: id, then as asked
        records += with_ids
    for record in records:
        for span in record["spans"]:
            assert record["restored"][span["start"]:span["end"]] == (span["text"] or record["inputs"][
                span["input_start"]:span["input_end"]])
            damaged = record["inputs"][span["input_start"]:span["input_end"]]
            assert SENTINEL.fullmatch(damaged) or damaged == "□" * span["length"]


def test_unknown_extension_missing_column_and_bad_model_are_one_line_errors(finished_run, tmp_path, hf_home):
    model = finished_run[0] / "best"
    (tmp_path / "notes.docx").write_text("x□\n", encoding="utf-8")
    (tmp_path / "notes.csv").write_text("id,text\n", encoding="utf-8")
    (tmp_path / "in.txt").write_text("x□\n", encoding="utf-8")
    for arguments, message in (
            (["--model", model, "--input", tmp_path / "notes.docx"], "unknown file type '.docx'"),
            (["--model", model, "--input", tmp_path / "notes.csv", "--text-column", "note"], "no column \"note\""),
            (["--model", tmp_path, "--input", tmp_path / "in.txt"], "not a model folder"),
            (["--model", model, "--input", tmp_path / "in.txt", "--ocr-confidence", "60"], "between 0 and 1"),
            (["--model", model, "--input", tmp_path / "in.txt", "--html", tmp_path / "no" / "r.html"], "does not exist"),
            (["--model", model, "--input", tmp_path / "in.txt", "--output", tmp_path / "o.xml"], "write .jsonl")):
        result = restore(hf_home, "--output", tmp_path / "o.jsonl", *arguments)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.jsonl").exists()


def test_ctrl_c_leaves_complete_lines_and_says_how_far_it_got(finished_run, tmp_path, hf_home):
    lines = [f"第{number}例：患者因□□□□□□入院，首选检查为□□□。" for number in range(4000)]
    (tmp_path / "many.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "out.jsonl"
    process = subprocess.Popen([sys.executable, str(ROOT / "restore.py"), "--model", str(finished_run[0] / "best"),
                                "--input", str(tmp_path / "many.txt"), "--output", str(output),
                                "--html", str(tmp_path / "review.html")],
                               stderr=subprocess.PIPE, text=True, env=offline_environment(hf_home))
    deadline = time.time() + 240
    while time.time() < deadline and (not output.exists() or output.stat().st_size < 2000):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    written = output.read_text(encoding="utf-8")
    assert written.endswith("\n")
    records = [json.loads(line) for line in written.splitlines()]
    assert 0 < len(records) < len(lines)
    assert [record["inputs"] for record in records] == lines[:len(records)]
    assert f"Interrupted: {len(records)} of {len(lines)} texts written" in stderr
    # The review page shows exactly the texts written, no more.
    assert f"the review page {tmp_path / 'review.html'} shows {len(records)} texts" in stderr
    page = (tmp_path / "review.html").read_text(encoding="utf-8")
    assert lines[len(records) - 1] in page and lines[len(records)] not in page
