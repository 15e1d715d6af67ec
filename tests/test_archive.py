"""Archives restored fast and in parallel: the fast lexicon search chooses what scoring every term
would, and restore.py split over processes, interrupted and resumed writes what one uninterrupted
process writes."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, clinical_lexicon, offline_environment
from hypothesis import given, settings
from hypothesis import strategies as st

LINES = [f"第{number:04d}例：患者因□□□□□□入院，首选检查为□□□。" for number in range(240)]


def brute_force(restorer, window_text, candidates, closing):
    """Each candidate's log-probability by plain teacher forcing: the model's forward over the whole
    decoder sequence, no cache, no hook, the log-softmax of every position gathered."""
    import torch

    batch = restorer.tokenizer([window_text] * len(candidates), return_tensors="pt")
    head = restorer.prefix([], 0)
    width = max(map(len, candidates))
    decoder = torch.tensor([head + list(tokens) + [0] * (width - len(tokens)) for tokens in candidates])
    with torch.inference_mode():
        log_probabilities = torch.log_softmax(restorer.model(**batch, decoder_input_ids=decoder).logits.float(), -1)
    return [sum(float(log_probabilities[row, len(head) - 1 + step, label])
                for step, label in enumerate(list(tokens) + [closing])) for row, tokens in enumerate(candidates)]


def test_the_lexicon_search_chooses_what_scoring_every_term_chooses(mt5_folder):
    """On the mT5-shaped model (the demo model's lexicon choice: tests/test_mt5.py): the 13 best
    candidates, terms and beam texts alike, in the order and with the log-probabilities that plain
    teacher forcing of every term of the gap's length gives."""
    import torch

    from domainfocus.damage import from_sentinels
    from domainfocus.restoration import Decoding, Restorer
    from domainfocus.windows import cut_windows

    folder = mt5_folder
    terms = clinical_lexicon()
    characters = sorted({character for term in terms for character in term})
    rng = random.Random(1)
    lexicon = list(dict.fromkeys(["".join(rng.choices(characters, k=rng.choice((3, 4)))) for _ in range(300)] + terms))
    base = Restorer.load(str(folder), device="cpu")
    restorer = Restorer(base.model, base.tokenizer, Decoding(num_beams=2, lexicon_bonus=1.0), lexicon)
    beams_only = Restorer(base.model, base.tokenizer, Decoding(num_beams=2))
    texts = ["<extra_id_0>患者常表现为心悸多汗。", "首选检查为<extra_id_0>。", "予<extra_id_0>口服。"]
    documents = [from_sentinels(text, [length]) for text, length in zip(texts, (4, 3, 4))]
    restorer.restore_documents(documents[:1])  # builds the token table
    beams_only.restore_documents(documents[:1])
    windows = [window for document in documents for window in cut_windows(document, base.tokenizer, restorer.decoding)]
    with torch.inference_mode():
        chosen = restorer.restore_windows(windows, 12, "cpu")
        written = beams_only.restore_windows(windows, 12, "cpu")
    assert restorer.searches_cut == 0
    closing = int(restorer.table.sentinel_ids[1])
    for window in windows:
        [span] = window.spans
        pool = {candidate.tokens: False for candidate in [written[id(span)][0], *written[id(span)][1]] if candidate}
        node_stack = [(restorer.lexicon[span.length], ())]
        while node_stack:  # every term of the gap's length
            node, tokens = node_stack.pop()
            if node.terms:
                pool[tokens] = True
            node_stack += [(child, tokens + (token,)) for token, child in node.children.items()]
        scores = brute_force(restorer, window.text, list(pool), closing)
        ranked = sorted(zip(pool, scores), key=lambda pair: -(pair[1] + (1.0 if pool[pair[0]] else 0.0)))[:13]
        found = [chosen[id(span)][0], *chosen[id(span)][1]]
        assert [candidate.tokens for candidate in found] == [tokens for tokens, _ in ranked]
        assert [candidate.log_probability for candidate in found] == pytest.approx([score for _, score in ranked],
                                                                                   abs=1e-4)


def restore_command(model, source, output, *extra):
    return [str(ROOT / "restore.py"), "--model", str(model), "--input", str(source), "--output", str(output), *extra]


def test_two_processes_under_torchrun_write_what_one_process_writes(finished_run, tmp_path, hf_home):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(LINES[:80]) + "\n", encoding="utf-8")
    model = finished_run[0] / "best"
    environment = offline_environment(hf_home)
    one = subprocess.run([sys.executable, *restore_command(model, source, tmp_path / "one.jsonl")],
                         check=False, capture_output=True, text=True, timeout=300, env=environment)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port",
                          str(29400 + os.getpid() % 500), *restore_command(model, source, tmp_path / "two.jsonl")],
                         check=False, capture_output=True, text=True, timeout=300, env=environment)
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.txt", "one.jsonl", "two.jsonl"]  # no parts left
    # What a kill can leave for --resume in one process: a last line cut short in the output, and
    # (split runs) the first texts in a part beside an output still empty.
    lines = (tmp_path / "one.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    cut, parted = tmp_path / "cut.jsonl", tmp_path / "parted.jsonl"
    cut.write_text("".join(lines[:3]) + lines[3][:40], encoding="utf-8")
    parted.write_text("", encoding="utf-8")
    (tmp_path / "parted.jsonl.part-000000000").write_text("".join(lines[:20]), encoding="utf-8")
    for output in (cut, parted):
        resumed = subprocess.run([sys.executable, *restore_command(model, source, output, "--resume")],
                                 check=False, capture_output=True, text=True, timeout=300, env=environment)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert output.read_bytes() == (tmp_path / "one.jsonl").read_bytes(), output.name
    assert not list(tmp_path.glob("*.part-*"))


@pytest.mark.parametrize("stop", [signal.SIGTERM])  # SIGINT: tests/test_restore.py, Ctrl+C
def test_a_stopped_restore_leaves_complete_lines_and_resume_finishes_it_as_if_never_stopped(
        stop, finished_run, tmp_path, hf_home):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    model, output = finished_run[0] / "best", tmp_path / "out.jsonl"
    environment = offline_environment(hf_home)
    process = subprocess.Popen([sys.executable, *restore_command(model, source, output)], stderr=subprocess.PIPE,
                               text=True, env=environment)
    deadline = time.time() + 120
    while time.time() < deadline and (not output.exists() or output.stat().st_size < 3000):
        time.sleep(0.02)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    written = output.read_text(encoding="utf-8")
    assert written.endswith("\n") and 0 < len(written.splitlines()) < len(LINES)
    assert f"{len(written.splitlines())} of {len(LINES)} texts written" in stderr
    assert "run again with --resume to continue" in stderr
    # A mark on the first line written: --resume must continue after it, not restore it again.
    first, *rest = written.splitlines(keepends=True)
    output.write_text(json.dumps({**json.loads(first), "mark": "first run"}, ensure_ascii=False) + "\n" + "".join(rest),
                      encoding="utf-8")
    resumed = subprocess.run([sys.executable, *restore_command(model, source, output, "--resume")],
                             check=False, capture_output=True, text=True, timeout=300, env=environment)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = subprocess.run([sys.executable, *restore_command(model, source, tmp_path / "whole.jsonl")],
                           check=False, capture_output=True, text=True, timeout=300, env=environment)
    assert whole.returncode == 0
    lines, expected = output.read_text(encoding="utf-8").splitlines(), (tmp_path / "whole.jsonl").read_text(
        encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {**json.loads(expected[0]), "mark": "first run"}
    assert lines[1:] == expected[1:] and output.read_text(encoding="utf-8").endswith("\n")
    assert [json.loads(line)["inputs"] for line in lines] == LINES


def test_resume_refuses_standard_output_and_an_output_of_another_input(finished_run, tmp_path, hf_home):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(LINES[:5]) + "\n", encoding="utf-8")
    (tmp_path / "other.jsonl").write_text(json.dumps({"inputs": "another text"}) + "\n", encoding="utf-8")
    model = finished_run[0] / "best"
    for output, message in (("-", "--resume needs --output to be a file"),
                            (tmp_path / "other.jsonl", "is not the restoration of text 1")):
        result = subprocess.run([sys.executable, *restore_command(model, source, output, "--resume")],
                                check=False, capture_output=True, text=True, timeout=300, env=offline_environment(hf_home))
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="患者心悸多汗首选检查为予口服℃㎎ⅡⅢ½，。：；（）“”abcgmklCIVμ°⁄.!?(一)0123456789 ", max_size=12))
def test_the_reading_of_a_text_that_cannot_fold_is_what_the_general_walk_reads(text):
    """lengths.read takes a shortcut for text that writes no image (CJK words, Latin words without a
    unit); on clinical characters, compatibility characters, Latin letters, parts of units, digits and
    spaces it must read exactly what the general walk reads, the ends that begin an image included."""
    import re

    from domainfocus import lengths

    shortcut = lengths.read(text)
    real = lengths.written_image
    lengths.written_image = lambda: re.compile("")  # finds an image everywhere: the shortcut is never taken
    try:
        assert shortcut == lengths.read(text)
    finally:
        lengths.written_image = real
