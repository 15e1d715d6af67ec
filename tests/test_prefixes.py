"""The decoder's keys and values as restoration keeps them (domainfocus/prefixes.py) change nothing it
reads: scoring after a kept prefix equals plain teacher forcing of the whole sequence (windows of
different lengths in one batch, heads of different lengths in one pass, padded on the left, heads
extended span by span, and a head that is not an extension), and beam search that leaves the
cross-attention in place writes the beams transformers' own cache writes."""

import pytest
from conftest import ROOT

WINDOWS = ["予<extra_id_0>口服，每日<extra_id_1>次。", "患者<extra_id_0>，体温38.5℃，血压<extra_id_1>mmHg，<extra_id_2>。",
           "首选检查为<extra_id_0>。"]


def plain(model, batch, window, sequence):
    """The log-softmax at every position of `sequence` after window `window`: the model's forward over the
    whole decoder sequence, no cache, no hook."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=batch["input_ids"][window:window + 1],
                       attention_mask=batch["attention_mask"][window:window + 1],
                       decoder_input_ids=torch.tensor([sequence])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def check_against_plain_teacher_forcing(model, tokenizer):
    import torch

    from domainfocus.prefixes import DecoderPrefixes

    model.eval()
    batch = tokenizer(WINDOWS, return_tensors="pt", padding=True)
    ids = tokenizer(["心悸 多汗 阿司匹林 二甲双胍 ㎎ Ⅱ 3 fever and productive cough"], add_special_tokens=False)["input_ids"][0]
    assert len(ids) >= 9
    start = model.config.decoder_start_token_id
    s = tokenizer.convert_tokens_to_ids([f"<extra_id_{k}>" for k in range(3)])
    with torch.inference_mode():
        encoded = model.get_encoder()(**batch).last_hidden_state
        prefixes = DecoderPrefixes(model, encoded, batch["attention_mask"])
        rounds = [  # (window, head, suffix, first): heads of 2, 4, 6 and 9 tokens side by side, then grown
            [(0, [start, s[0]], ids[:3], 0), (1, [start, s[0]] + ids[:2] + [s[1]], ids[2:4], 0),
             (1, [start, s[0]] + ids[:2] + [s[1]], [], 0), (2, [start, s[0]], ids[4:9], 2)],
            [(0, [start, s[0]] + ids[5:8] + [s[1]], ids[1:2], 0),
             (1, [start, s[0]] + ids[:2] + [s[1]] + ids[3:5] + [s[2]], ids[:4], 1),
             (2, [start, s[0]] + ids[:1], ids[1:3], 0)],
            # a short head grows beside longer ones it does not change; then heads that are not extensions
            [(2, [start, s[0]] + ids[:1] + ids[7:9], ids[2:5], 0), (1, [start, s[0]] + ids[:2] + [s[1]], ids[5:7], 0)],
            [(0, [start, s[0]], ids[2:6], 3), (1, [start, s[0]] + ids[:2] + [s[1]] + ids[3:5] + [s[2]], ids[:2], 0),
             (2, [start, s[0]] + ids[:1] + ids[7:9], [], 0)],
        ]
        for requests in rounds:
            found = prefixes.after(*map(list, zip(*requests)))
            for (window, head, suffix, first), got in zip(requests, found):
                whole = plain(model, batch, window, head + suffix)
                wanted = whole[len(head) - 1 + first:len(head) + len(suffix)]
                assert got.shape == wanted.shape
                assert torch.allclose(got, wanted, atol=1e-4), (window, head, suffix, first)


def test_scores_after_a_kept_prefix_equal_plain_teacher_forcing_on_the_mt5_shaped_model(mt5_folder):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(mt5_folder)  # as Restorer.load reads it
    assert not model.lm_head.weight.equal(model.shared.weight)  # an LM head of its own
    check_against_plain_teacher_forcing(model, AutoTokenizer.from_pretrained(mt5_folder))


def test_scores_after_a_kept_prefix_equal_plain_teacher_forcing_on_the_demo_model(monkeypatch):
    """The demo's model: a tied T5 (its decoder output scaled before the LM head); and again with every
    pass cut into one row at a time, as a large model's rows are."""
    from domainfocus import prefixes
    from domainfocus.modeling import build_tiny_t5

    tokenizer, model = build_tiny_t5(str(ROOT / "demo" / "train.jsonl"), "inputs", "targets", seed=0)
    assert model.config.tie_word_embeddings
    check_against_plain_teacher_forcing(model, tokenizer)
    monkeypatch.setattr(prefixes, "KEPT_BYTES_PER_CHUNK", 1)
    check_against_plain_teacher_forcing(model, tokenizer)


def check_beam_search_unchanged(model, tokenizer):
    import torch

    from domainfocus.prefixes import beam_cache

    model.eval()
    batch = tokenizer(WINDOWS, return_tensors="pt", padding=True)
    settings = {"num_beams": 4, "num_return_sequences": 4, "max_new_tokens": 12, "do_sample": False,
                "output_scores": True, "return_dict_in_generate": True}
    with torch.inference_mode():
        plain = model.generate(**batch, **settings)
        shared = model.generate(**batch, **settings, past_key_values=beam_cache(model))
    assert torch.equal(plain.sequences, shared.sequences)
    assert torch.allclose(plain.sequences_scores, shared.sequences_scores, atol=1e-5)


def test_beam_search_leaving_cross_attention_in_place_writes_what_it_writes_otherwise(mt5_folder):
    """restoration.py gives generate() prefixes.beam_cache, which does not reorder the cross-attention
    keys and values among a window's beams: every beam of every window, and its score, must be what
    transformers' own cache gives, on the mT5-shaped and the demo model."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from domainfocus.modeling import build_tiny_t5

    check_beam_search_unchanged(AutoModelForSeq2SeqLM.from_pretrained(mt5_folder),
                                AutoTokenizer.from_pretrained(mt5_folder))
    tokenizer, model = build_tiny_t5(str(ROOT / "demo" / "train.jsonl"), "inputs", "targets", seed=0)
    check_beam_search_unchanged(model, tokenizer)


@pytest.fixture(autouse=True)
def one_thread():
    """Float sums in one order, so that the tolerance above measures the method, not the threads."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
