"""prepare.py: whole lexicon terms masked as units, exact and reproducible output, safe properties."""

import json
import random
import re
import subprocess
import sys
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT
from domainfocus.data import check_sentinels
from domainfocus.spans import example_text
from domainfocus.masking import UNIT, Lexicon, Masker, cut_examples, overlap, text_digests
from prepare import parse_options, prepare
from domainfocus.spans import fill_spans, normalize, parse_spans

FIXTURES = ROOT / "tests" / "fixtures"


def run_prepare(tmp_path, *extra):
    options = parse_options(["--text", str(FIXTURES / "notes.txt"), "--lexicon", str(FIXTURES / "lexicon.txt"),
                             "--hard-lexicon", str(FIXTURES / "hard_terms.txt"), "--out", str(tmp_path / "out"),
                             *extra])
    stats = prepare(options, report=lambda line: None)
    read = lambda name: [json.loads(line) for line in (tmp_path / "out" / name).read_text().splitlines()]
    return stats, read("train.jsonl"), read("valid.jsonl")


def test_every_term_masked_as_one_unit_when_asked(tmp_path):
    stats, train, valid = run_prepare(tmp_path, "--term-mask-prob", "1", "--hard-term-mask-prob", "1",
                                      "--mask-rate", "0", "--valid-ratio", "0")
    assert valid == []
    assert train[0] == {
        "inputs": "患者男，58岁，因<extra_id_0>2小时入院。<extra_id_1>示ST段抬高，诊断为<extra_id_2>，"
                  "立即给予<extra_id_3>和<extra_id_4>治疗。",
        "targets": "<extra_id_0>胸骨后压榨性疼痛<extra_id_1>心电图<extra_id_2>急性心肌梗死<extra_id_3>阿司匹林"
                   "<extra_id_4>溶栓<extra_id_5>"}
    # "Metformin" (capital M) is not the lexicon's "metformin"; "HbA1c" is matched as a whole word only.
    assert train[1]["targets"] == "<extra_id_0>type 2 diabetes<extra_id_1>HbA1c<extra_id_2>"
    # A term containing punctuation ("community-acquired pneumonia") is found but never masked.
    assert "community-acquired pneumonia" in train[3]["inputs"]
    assert stats["term_span_share"] == 1.0
    assert stats["documents"] == 4 and stats["examples_train"] == 4
    assert stats["lexicon_coverage"] == 12 / 13


def test_same_seed_same_files_and_default_rates(tmp_path):
    first = run_prepare(tmp_path / "a")
    second = run_prepare(tmp_path / "b")
    assert first == second
    stats = first[0]
    assert 0.15 <= stats["mask_rate"] <= 0.35
    assert run_prepare(tmp_path / "c", "--seed", "7")[1:] != first[1:]


def test_split_is_by_document(tmp_path):
    documents = [f"文档{i}：患者诊断为急性心肌梗死。给予阿司匹林。心电图正常。" * 3 for i in range(60)]
    (tmp_path / "docs.txt").write_text("\n".join(documents), encoding="utf-8")
    options = parse_options(["--text", str(tmp_path / "docs.txt"), "--lexicon", str(FIXTURES / "lexicon.txt"),
                             "--out", str(tmp_path / "out"), "--valid-ratio", "0.2", "--max-chars", "20"])
    stats = prepare(options, report=lambda line: None)
    owner = lambda name: {re.match(r"文档(\d+)", fill_spans(e["inputs"], parse_spans(e["targets"]))).group(1)
                          for e in map(json.loads, (tmp_path / "out" / name).read_text().splitlines())
                          if re.match(r"文档\d+", fill_spans(e["inputs"], parse_spans(e["targets"])))}
    assert 0 < stats["documents_valid"] < 60
    assert not owner("train.jsonl") & owner("valid.jsonl")


def copies(document, count):
    """`count` copies of a document as users' exports have them: full-width punctuation turned
    half-width, spaces added or dropped."""
    variants = [document, document.replace("，", ",").replace("：", ":"), " ".join(document), document + " "]
    return variants[:count]


def test_repeated_documents_are_kept_once_and_never_on_both_sides(tmp_path):
    """Clinical exports repeat whole notes, often differing only in full-width punctuation or spaces:
    each is kept once, and the split by content puts no text on both sides."""
    rng = random.Random(3)
    documents = []
    for number in range(300):
        note = f"病例{number}：患者诊断为急性心肌梗死，给予阿司匹林，复查心电图。"
        documents += copies(note, rng.choice([1, 1, 2, 3, 4]))
    rng.shuffle(documents)
    (tmp_path / "notes.txt").write_text("\n".join(documents), encoding="utf-8")
    options = parse_options(["--text", str(tmp_path / "notes.txt"), "--lexicon", str(FIXTURES / "lexicon.txt"),
                             "--out", str(tmp_path / "out"), "--valid-ratio", "0.3"])
    stats = prepare(options, report=lambda line: None)
    text = lambda name: [normalize(fill_spans(e["inputs"], parse_spans(e["targets"])))
                         for e in map(json.loads, (tmp_path / "out" / name).read_text().splitlines())]
    train, valid = text("train.jsonl"), text("valid.jsonl")
    assert stats["documents"] == 300 and stats["duplicates"] == len(documents) - 300
    assert len(train) == len(set(train)) and len(valid) == len(set(valid)) and 50 < len(valid) < 130
    assert not set(train) & set(valid)
    assert stats["valid_examples_in_train"] == 0


def test_a_group_field_keeps_every_document_of_a_patient_on_one_side(tmp_path):
    records = [{"patient": f"P{number % 40}", "text": f"第{number}次就诊：患者诊断为急性心肌梗死，复查心电图。"}
               for number in range(400)]
    (tmp_path / "notes.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records),
                                          encoding="utf-8")
    options = parse_options(["--text", str(tmp_path / "notes.jsonl"), "--lexicon", str(FIXTURES / "lexicon.txt"),
                             "--out", str(tmp_path / "out"), "--valid-ratio", "0.3", "--group-field", "patient"])
    prepare(options, report=lambda line: None)
    visit = {r["text"].split("：")[0]: r["patient"] for r in records}
    patients = lambda name: {visit[fill_spans(e["inputs"], parse_spans(e["targets"])).split("：")[0]]
                             for e in map(json.loads, (tmp_path / "out" / name).read_text().splitlines())}
    assert patients("valid.jsonl") and not patients("train.jsonl") & patients("valid.jsonl")
    result = subprocess.run([sys.executable, str(ROOT / "prepare.py"), "--text", str(FIXTURES / "notes.txt"),
                             "--lexicon", str(FIXTURES / "lexicon.txt"), "--out", str(tmp_path / "o"),
                             "--group-field", "patient"], capture_output=True, text=True)
    assert result.returncode == 2 and "needs .jsonl" in result.stderr and "Traceback" not in result.stderr


def test_the_demo_validation_shares_no_sentence_with_its_training_data():
    """Not even one alike but for its numbers: the demo's figures measure restoration, not memory."""
    read = lambda name: [json.loads(line) for line in (ROOT / "demo" / name).read_text(encoding="utf-8").splitlines()]
    lines = lambda name: (ROOT / "demo" / name).read_text(encoding="utf-8").splitlines()
    prepared = {split: [text_digests(example_text(e["inputs"], e["targets"])) for e in read(f"{split}.jsonl")]
                for split in ("train", "valid")}
    raw = {split: [text_digests(line) for line in lines(name)]
           for split, name in (("train", "corpus.txt"), ("valid", "corpus_valid.txt"))}
    for data in (prepared, raw):
        assert overlap(data["train"], data["valid"]) == (0, 0)


def test_long_documents_are_cut_at_sentence_ends():
    text = "第一句很短。第二句也不长。" + "长" * 30 + "。最后一句。"
    pieces = cut_examples(text, max_chars=14)
    assert pieces[0] == "第一句很短。第二句也不长。"
    assert all(len(piece) <= 14 for piece in pieces) and "".join(pieces) == text


def test_noise_damages_only_unmasked_text(tmp_path):
    _, clean, _ = run_prepare(tmp_path / "a", "--valid-ratio", "0")
    _, noisy, _ = run_prepare(tmp_path / "b", "--valid-ratio", "0", "--noise", "0.3")
    assert [e["targets"] for e in clean] == [e["targets"] for e in noisy]
    assert [e["inputs"] for e in clean] != [e["inputs"] for e in noisy]


def test_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "gbk.txt").write_bytes("患者".encode("gbk"))
    for arguments, expected in [
        (["--text", str(tmp_path / "none.txt")], "no such file"),
        (["--text", str(tmp_path / "gbk.txt")], "gbk.txt:1: not UTF-8"),
        (["--text", str(FIXTURES / "notes.txt"), "--mask-rate", "1.5"], "--mask-rate=1.5: must lie between 0 and 1"),
    ]:
        result = subprocess.run([sys.executable, str(ROOT / "prepare.py"), *arguments, "--lexicon",
                                 str(FIXTURES / "lexicon.txt"), "--out", str(tmp_path / "out")],
                                capture_output=True, text=True)
        assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr


LEXICON = ["急性心肌梗死", "心电图", "阿司匹林", "溶栓", "type 2 diabetes", "HbA1c", "CT"]
PIECES = st.sampled_from(LEXICON + ["患者", "出现", "治疗", "，", "。", "（", "）", " ", "the ", "patient",
                                    "3.5", "mg", "、", "；", "!", "未见异常", "ST段"])


@settings(max_examples=200, deadline=None)
@given(st.lists(PIECES, min_size=1, max_size=80), st.integers(0, 2**16), st.sampled_from([0.0, 0.22, 0.6]))
def test_masking_properties(pieces, seed, mask_rate):
    text = "".join(pieces).strip() or "患者"
    lexicon = Lexicon(LEXICON[:5], hard_terms=LEXICON[5:])
    masker = Masker(lexicon, 0.6, 0.7, mask_rate, max_span=3, noise=0.0, seed=seed)
    example, spans, _, _ = masker.example(text)
    # Merging the targets back into the inputs gives the original text.
    assert fill_spans(example["inputs"], parse_spans(example["targets"])) == text
    assert check_sentinels(example["inputs"], example["targets"]) is None
    assert len(spans) <= 100
    found = lexicon.find(text)
    for start, end, is_term in spans:
        span = text[start:end]
        # A span is a whole found term, or stays clear of every found term (never cuts into one).
        assert (start, end) in found if is_term else all(end <= a or start >= b for a, b in found)
        assert not any(unicodedata.category(char).startswith("P") for char in span)
        assert span == span.strip()
        assert span in lexicon.terms if is_term else len(UNIT.findall(span)) <= 3


def test_an_example_never_has_more_spans_than_sentinels_can_close():
    """99 spans at most: the targets close with <extra_id_99>; a 100th would need <extra_id_100>, no token."""
    terms = [f"术语{chr(0x4E00 + number)}" for number in range(200)]
    masker = Masker(Lexicon(terms, []), 1.0, 1.0, 0.9, 3, 0.0, 0)
    example, spans, _, _ = masker.example("，".join(terms) + "。")
    assert len(spans) == 99 and example["targets"].endswith("<extra_id_99>")
    assert check_sentinels(example["inputs"], example["targets"]) is None
