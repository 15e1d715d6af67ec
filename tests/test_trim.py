"""TRIM_VOCAB: a model whose vocabulary is far larger than the data needs loses the unused rows,
and nothing else changes on text the data is made of."""

import json

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from benchmarks.vocabulary import large_vocabulary_folder
from conftest import tiny_run_arguments
from domainfocus.modeling import model_saver, trim_vocabulary


@pytest.fixture(scope="module")
def large_model(tmp_path_factory, small_data):
    """The tiny T5 with a vocabulary of about 27,000 tokens (SentencePiece on 3 MB of synthetic text too)."""
    return large_vocabulary_folder(str(tmp_path_factory.mktemp("large")), str(small_data[0]))


def examples(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_trimmed_model_gives_the_same_logits_and_reloads_with_from_pretrained(large_model, small_data, tmp_path):
    data = examples(small_data[0]) + examples(small_data[1])
    texts = [example[column] for example in data for column in ("inputs", "targets")]
    tokenizer = AutoTokenizer.from_pretrained(large_model)
    model = AutoModelForSeq2SeqLM.from_pretrained(large_model).eval()
    sample = data[-8:]  # validation examples: in-vocabulary text
    batch = tokenizer([e["inputs"] for e in sample], text_target=[e["targets"] for e in sample], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    before_tokens, before_parameters = len(tokenizer), model.num_parameters()

    trimmed_tokenizer, trimmed_model = trim_vocabulary(tokenizer, model, texts, str(tmp_path / "work"))
    assert before_tokens > 20000 and len(trimmed_tokenizer) < before_tokens / 10
    assert trimmed_model.num_parameters() < before_parameters / 2
    model_saver(trimmed_model, trimmed_tokenizer)(str(tmp_path / "trimmed"))
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "trimmed")
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "trimmed").eval()

    new_batch = reloaded_tokenizer([e["inputs"] for e in sample], text_target=[e["targets"] for e in sample],
                                   padding=True, return_tensors="pt")
    old_vocabulary = tokenizer.get_vocab()
    kept = [old_vocabulary[reloaded_tokenizer.convert_ids_to_tokens(i)] for i in range(len(reloaded_tokenizer))]
    # The same segmentation, token for token, under the new numbering ...
    assert torch.equal(torch.tensor(kept)[new_batch["input_ids"]], batch["input_ids"])
    assert torch.equal(torch.tensor(kept)[new_batch["labels"]], batch["labels"])
    # ... and the same logits for every token that was kept.
    with torch.no_grad():
        new_logits = reloaded(**new_batch).logits
    assert torch.allclose(new_logits, logits[..., kept], atol=1e-5)
    assert reloaded_tokenizer.decode(new_batch["labels"][0], skip_special_tokens=False) == \
        tokenizer.decode(batch["labels"][0], skip_special_tokens=False)
    assert reloaded_tokenizer.convert_tokens_to_ids("<extra_id_0>") != reloaded_tokenizer.unk_token_id


def test_train_with_trim_vocab_trains_saves_and_resumes(large_model, run_train, tmp_path, small_data):
    output = tmp_path / "out"
    arguments = dict(MODEL_NAME_OR_PATH=large_model, TRIM_VOCAB=True, MAX_STEPS=10, EVAL_STEPS=5, SAVE_STEPS=5)
    result = run_train(tiny_run_arguments(small_data, output, **arguments))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "TRIM_VOCAB: 27" in result.stdout
    trimmed = len(AutoTokenizer.from_pretrained(output / "best"))
    assert trimmed < 2000 and AutoModelForSeq2SeqLM.from_pretrained(output / "latest").config.vocab_size == trimmed
    arguments["MAX_STEPS"] = 12
    resumed = run_train(tiny_run_arguments(small_data, output, **arguments))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"Resuming from {output / 'checkpoint-10'}" in resumed.stdout and "TRIM_VOCAB:" not in resumed.stdout
