"""Promises that must hold where real users run: an mT5-shaped model (untied LM head, NFKC SentencePiece
with multi-character pieces, <unk> for characters it never saw) on template-heavy clinical text
with ℃, ㎎, Ⅱ, ½ and full-width punctuation."""

import json
import math
import re
import signal

import pytest
from conftest import as_if_trained, clinical_lexicon, same_weights, tiny_run_arguments, trainer_state, wait_for

ANSWERS = ["38.5℃", "10㎎", "Ⅱ型糖尿病", "Ⅲ度房室传导阻滞", "½片", "（见附件）", "0.5㎖", "阿司匹林",
           "iron deficiency anaemia", "苯二氮䓬类", "鱻龘素", "肺癌ⅡA期", "NYHAⅢ级", "CKDⅣ期", "1½片", "98.6℉",
           "心率\u200b80次", "10 ㎎ qd"]


def restorer_of(folder, num_beams=1):
    from domainfocus.restoration import Restorer

    return Restorer.load(str(folder), device="cpu", num_beams=num_beams)


@pytest.fixture(scope="module")
def mt5(mt5_folder):
    return restorer_of(mt5_folder)


@pytest.fixture(scope="module")
def demo(finished_run):
    return restorer_of(finished_run[0] / "best")


def forced(restorer, span_tokens):
    """A stand-in for model.generate that writes these token lists as the spans."""
    import torch

    table = restorer.table
    tokens = [restorer.model.config.decoder_start_token_id]
    for number, ids in enumerate(span_tokens):
        tokens += [int(table.sentinel_ids[number])] + list(ids)
    tokens += [int(table.sentinel_ids[len(span_tokens)]), restorer.tokenizer.eos_token_id]

    def generate(attention_mask=None, num_return_sequences=1, **kwargs):
        return torch.tensor([tokens] * (attention_mask.shape[0] * num_return_sequences))

    return generate


@pytest.mark.parametrize("model", ["mt5", "demo"])
def test_the_true_text_of_every_gap_is_within_reach_of_the_length_constraint(model, request):
    """Each answer, tokenized as training targets are, passes the constraint token by token and may
    close exactly at its number of lost characters, although NFKC writes ℃ as °C, ㎎ as mg, Ⅱ as II."""
    import torch

    from domainfocus.constraint import SpanConstraint, TokenTable
    from domainfocus.lengths import source_length

    restorer = request.getfixturevalue(model)
    table = TokenTable(restorer.tokenizer, restorer.model.get_output_embeddings().weight.shape[0])
    normalized = [answer for answer in ANSWERS if restorer.tokenizer.tokenize(answer) != list(answer)]
    assert model == "demo" or {"38.5℃", "10㎎", "Ⅱ型糖尿病"} <= set(normalized)  # what mT5 users meet
    for answer in ANSWERS:
        tokens = restorer.span_tokens([answer])[0]
        constraint = SpanConstraint(table, [[source_length(answer)]], num_beams=1)
        written = [restorer.model.config.decoder_start_token_id, int(table.sentinel_ids[0])]
        for token in tokens + [int(table.sentinel_ids[1])]:
            allowed = constraint(torch.tensor([written]), torch.zeros(1, table.characters.shape[0])).isfinite()[0]
            assert allowed[token], (answer, restorer.tokenizer.convert_ids_to_tokens(tokens), len(written) - 2)
            written.append(token)


def test_a_gap_shows_the_character_its_length_calls_for(mt5, monkeypatch):
    mt5.restore(["x□"])  # builds the token table
    monkeypatch.setattr(mt5.model, "generate", forced(mt5, [mt5.span_tokens(["38.5℃"])[0]]))
    five, six = mt5.restore(["体温□□□□□，予布洛芬口服。", "体温□□□□□□，予布洛芬口服。"])
    assert five["restored"] == "体温38.5℃，予布洛芬口服。" and six["restored"] == "体温38.5°C，予布洛芬口服。"
    assert not five["spans"][0]["review"]


def test_a_character_the_vocabulary_cannot_write_is_marked_and_flagged_unless_the_lexicon_knows_it(mt5, monkeypatch):
    from domainfocus.restoration import Restorer

    mt5.restore(["x□"])
    tokens = mt5.span_tokens(["鱻龘素"])[0]
    assert mt5.tokenizer.unk_token_id in tokens  # mT5 has no byte fallback
    monkeypatch.setattr(mt5.model, "generate", forced(mt5, [tokens]))
    [result] = mt5.restore(["予□□□口服。"])
    [span] = result["spans"]
    assert span["text"] == "□□素" and span["review"] and "vocabulary cannot write" in span["reason"]
    assert result["restored"] == "予⟦□□素⟧口服。"  # never a substitute shown as a certainty
    with_lexicon = Restorer(mt5.model, mt5.tokenizer, mt5.decoding, lexicon=["鱻龘素", "阿司匹林"])
    with_lexicon.table = mt5.table
    [result] = with_lexicon.restore(["予□□□口服。"])
    [span] = result["spans"]  # filled in, but <unk> may stand for any characters: still the reader's call
    assert result["restored"] == "予⟦鱻龘素⟧口服。" and span["review"] and "lexicon supplies" in span["reason"]


def test_markers_for_what_the_model_cannot_write_keep_the_gaps_length(mt5, monkeypatch):
    mt5.restore(["x□"])
    unknown = mt5.tokenizer.unk_token_id
    for written, line, expected in ((mt5.span_tokens(["38.5℃"])[0] + [unknown], "体温□□□□□□。", "体温⟦38.5℃□⟧。"),
                                    (mt5.tokenizer.convert_tokens_to_ids(["m"]) + [unknown] +
                                     mt5.tokenizer.convert_tokens_to_ids(["g"]), "予10□□□。", "予10⟦m□g⟧。")):
        monkeypatch.setattr(mt5.model, "generate", forced(mt5, [written]))
        [result] = mt5.restore([line])
        assert result["restored"] == expected and result["spans"][0]["review"]


@pytest.mark.parametrize("model", ["mt5", "demo"])
def test_every_token_the_constraint_allows_leaves_a_way_to_close_the_gap_at_its_length(model, request):
    """No dead ends: after any allowed token the span can still be filled to exactly its length
    (`...` may be `…` for one lost character, but `....` can never be one), checked for every allowed
    token after written starts that fold, and along random walks that favour folding characters."""
    import random

    import torch

    from domainfocus.constraint import SpanConstraint, TokenTable

    restorer = request.getfixturevalue(model)
    table = TokenTable(restorer.tokenizer, restorer.model.get_output_embeddings().weight.shape[0])
    start, opening, closing = restorer.model.config.decoder_start_token_id, *map(int, table.sentinel_ids[:2])
    width = table.characters.shape[0]

    def allowed_after(sequences, length):
        rows = torch.tensor(sequences)
        constraint = SpanConstraint(table, [[length]], num_beams=len(sequences))
        return constraint(rows, torch.zeros(len(sequences), width)).isfinite()

    for text, length in (("...", 1), ("5mg", 3), ("38.5°", 5), ("10m", 3), ("II", 2), ("1⁄", 1), ("..", 2), ("P", 1)):
        written = [start, opening] + restorer.span_tokens([text])[0]
        following = [token for token in allowed_after([written], length)[0].nonzero().flatten().tolist()
                     if token != closing]
        after = allowed_after([written + [token] for token in following], length) if following else []
        stuck = [table.texts[token] for token, row in zip(following, after) if row[table.eos]]
        assert not stuck, (text, length, stuck[:10])
    rng = random.Random(0)
    folding = {token for token, text in enumerate(table.texts) if text and set(text) & set(".°⁄0123456789mgIVlkc")}
    for _ in range(150):
        length, written = rng.randint(1, 5), [start, opening]
        for _ in range(4 * length + 4):
            allowed = allowed_after([written], length)[0]
            assert not allowed[table.eos], (length, restorer.tokenizer.convert_ids_to_tokens(written))
            options = [token for token in allowed.nonzero().flatten().tolist() if token != closing]
            if not options or (allowed[closing] and rng.random() < 0.3):
                assert allowed[closing]
                break
            favoured = [token for token in options if token in folding]
            written.append(rng.choice(favoured if favoured and rng.random() < 0.8 else options))
        else:
            raise AssertionError(("never closed", length, restorer.tokenizer.convert_ids_to_tokens(written)))


def test_nothing_is_hidden_and_every_length_is_exact_on_clinical_text(mt5_run):
    from domainfocus.lengths import source_length

    restorer = restorer_of(mt5_run / "best", num_beams=4)
    lines = ["患者男，□□岁，因□□□□□□□□2天入院。查体：体温□□□□□，血压140/90mmHg。",
             "入院诊断：□□□□□。予阿司匹林□□□口服，每日□次。", "既往□□□□□病史4年，NYHA心功能□□级，否认药物过敏史。",
             "出院医嘱：硫酸亚铁□□，每日2次；如有面色苍白乏力，及时就诊！"]
    results = restorer.restore(lines, alternatives=3)
    spans = [span for result in results for span in result["spans"]]
    assert all(span["confidence"] is not None for span in spans)  # restored, not given up
    for line, result in zip(lines, results):
        runs = re.findall("□+", line)
        assert len(result["spans"]) == len(runs)
        rebuilt = re.split("□+", line)[0]
        for run, span, after in zip(runs, result["spans"], re.split("□+", line)[1:]):
            if span["confidence"] is None:  # left marked, in plain sight
                rebuilt += run + after
                continue
            assert source_length(span["text"]) == len(run)  # a character it cannot write shows as □, counted
            assert all(source_length(other["text"]) == len(run) for other in span["alternatives"])
            rebuilt += ("⟦" + span["text"] + "⟧" if span["review"] else span["text"]) + after
        assert result["restored"] == rebuilt


@pytest.mark.parametrize("model, bonus", [("mt5", 0.0), ("demo", 0.0), ("mt5", 2.0)])
def test_the_lexicon_choice_is_exact_however_large_the_lexicon(model, bonus, request):
    """The chosen term and its alternatives are the likeliest of ALL terms that fit, as scoring every
    one of them finds: the real terms sit behind 3,000 others of the same length and characters
    (also with a lexicon bonus, which every bound of the search must carry)."""
    import random

    import torch

    from domainfocus.damage import from_sentinels
    from domainfocus.restoration import Decoding, Restorer

    base = request.getfixturevalue(model)
    terms = clinical_lexicon()
    characters = sorted({character for term in terms for character in term})
    rng = random.Random(0)
    lexicon = list(dict.fromkeys(["".join(rng.choices(characters, k=4)) for _ in range(3000)] + terms))
    text = "<extra_id_0>患者常表现为心悸多汗，首选检查为<extra_id_1>。"
    lengths = [4, 3]
    restorer = Restorer(base.model, base.tokenizer, Decoding(num_beams=2, lexicon_bonus=bonus), lexicon=lexicon)
    [result] = restorer.restore_documents([from_sentinels(text, lengths)], alternatives=12)
    # Every fitting term scored by hand after the restored first span, beside what the beams wrote.
    shown = [result["spans"][0]] + [dict(a) for a in result["spans"][0]["alternatives"]]
    chosen = restorer.lexicon[4]
    fitting = []

    def walk(node, tokens):
        fitting.extend((term, tokens) for term in node.terms)
        for token, child in node.children.items():
            walk(child, tokens + (token,))

    walk(chosen, ())
    assert len(fitting) > 2000
    batch = restorer.tokenizer([text], return_tensors="pt")
    head, closing = restorer.prefix([], 0), int(restorer.table.sentinel_ids[1])
    scores = []
    with torch.inference_mode():  # plain teacher forcing: the model over the whole decoder sequence, nothing kept
        for start in range(0, len(fitting), 500):
            chunk = [list(tokens) + [closing] for _, tokens in fitting[start:start + 500]]
            width = max(map(len, chunk))
            decoder = torch.tensor([head + labels + [0] * (width - len(labels)) for labels in chunk])
            logits = restorer.model(input_ids=batch["input_ids"].expand(len(chunk), -1),
                                    attention_mask=batch["attention_mask"].expand(len(chunk), -1),
                                    decoder_input_ids=decoder).logits
            log_probabilities = torch.log_softmax(logits.float(), dim=-1)
            scores += [sum(float(log_probabilities[row, len(head) - 1 + step, label]) for step, label in enumerate(labels))
                       for row, labels in enumerate(chunk)]
    by_tokens = {}  # terms that tokenize alike are one candidate to the model
    for score, (term, tokens) in zip(scores, fitting):
        by_tokens.setdefault(tokens, (score, []))[1].append(term)
    best_terms = sorted(by_tokens.values(), key=lambda pair: -pair[0])[:13]
    assert restorer.searches_cut == 0
    assert len(shown) == 13  # thousands of terms fit: the chosen one and twelve alternatives are always there
    confidences = {entry["text"]: entry["confidence"] for entry in shown}
    for log_probability, alike in best_terms:
        probability = math.exp(log_probability)
        if probability >= min(confidences.values()) * 1.001:  # good enough to be shown: it must be
            listed = [term for term in alike if term in confidences]
            assert listed, (alike, probability, confidences)
            assert confidences[listed[0]] == pytest.approx(probability, rel=1e-3)


def test_an_interrupted_mt5_run_resumes_to_the_same_weights_and_keeps_its_own_head(mt5_run, mt5_folder, clinical_data,
                                                                                  start_train, run_train, tmp_path):
    from safetensors import safe_open

    output = tmp_path / "interrupted"
    arguments = tiny_run_arguments(clinical_data, output, MODEL_NAME_OR_PATH=mt5_folder, LEARNING_RATE=3e-3)
    process = start_train(arguments)
    wait_for(tmp_path / "console.log", r"step 1[2-8]/20")
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    resumed = run_train(arguments)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert trainer_state(output / "checkpoint-20")["global_step"] == 20
    assert same_weights(output / "latest", mt5_run / "latest")
    with safe_open(str(output / "best" / "model.safetensors"), "pt") as weights:
        assert not weights.get_tensor("lm_head.weight").equal(weights.get_tensor("shared.weight"))


def test_lora_best_of_an_mt5_shaped_model_computes_what_the_adapters_compute(mt5_folder, tmp_path):
    """best/ (merged, loaded without peft) and the PeftModel that trained give the same logits within
    1e-5; built from a config, transformers 5 would tie the separate head to the embedding."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    import train as tool
    from domainfocus.modeling import attach_lora, model_saver

    tokenizer = AutoTokenizer.from_pretrained(mt5_folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(mt5_folder)
    model = as_if_trained(attach_lora(model, 4, tool.LORA_ALPHA, tool.LORA_DROPOUT, tool.LORA_TARGET_MODULES.split(",")),
                          0.05)
    model_saver(model, tokenizer)(str(tmp_path / "best"))
    batch = tokenizer(["体温<extra_id_0>，予<extra_id_1>口服。"], text_target=["<extra_id_0>38.5℃<extra_id_1>布洛芬"],
                      return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
        merged = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "best").eval()
        assert merged.lm_head.weight is not merged.shared.weight
        assert (merged(**batch).logits - expected).abs().max() < 1e-5


def test_a_bf16_base_is_merged_from_the_weights_it_was_loaded_with(mt5_folder):
    import torch
    from transformers import AutoModelForSeq2SeqLM

    import train as tool
    from domainfocus.modeling import attach_lora, merged_model

    loaded = AutoModelForSeq2SeqLM.from_pretrained(mt5_folder)
    original = {name: tensor.clone() for name, tensor in loaded.state_dict().items()}
    model = attach_lora(loaded, 4, tool.LORA_ALPHA, tool.LORA_DROPOUT, ["q", "v"], bf16=True)
    as_if_trained(model, 0.05)
    assert model.get_base_model().shared.weight.dtype == torch.bfloat16
    merged = merged_model(model).state_dict()
    assert torch.equal(merged["shared.weight"], original["shared.weight"])  # not its bf16 rounding
    assert torch.equal(merged["lm_head.weight"], original["lm_head.weight"])
    query = "encoder.block.0.layer.0.SelfAttention.q.weight"
    layer = model.get_base_model().encoder.block[0].layer[0].SelfAttention.q
    assert torch.allclose(merged[query], original[query] + layer.get_delta_weight("default").float(), atol=0, rtol=0)


def test_adapters_on_other_layers_than_the_checkpoints_are_refused(mt5_folder, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    import train as tool
    from domainfocus.modeling import adapter_problem, attach_lora, lora_problem

    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 16, "target_modules": ["q", "v"]}))
    # A layer every T5 has is refused before anything loads; one the model may lack once it has loaded.
    assert "on q,v; set those" in lora_problem(tmp_path, 4, 16, ["q", "v", "o"])
    assert lora_problem(tmp_path, 4, 16, ["q", "v", "wi"]) is None
    same = attach_lora(AutoModelForSeq2SeqLM.from_pretrained(mt5_folder), 4, 16, tool.LORA_DROPOUT, ["q", "v", "wi"])
    assert adapter_problem(tmp_path, same) is None  # mT5 has no "wi" (its feed-forward is wi_0, wi_1)
    more = attach_lora(AutoModelForSeq2SeqLM.from_pretrained(mt5_folder), 4, 16, tool.LORA_DROPOUT, ["q", "v", "o"])
    assert "set LORA_TARGET_MODULES='q,v'" in adapter_problem(tmp_path, more)
