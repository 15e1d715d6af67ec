"""Models for train.py: loading (hub name, local folder, or the tiny T5 built locally for the demo
and the tests, or its mT5-shaped sibling), their shapes for the memory plan, vocabulary trimming,
LoRA adapters and their exact merge, and saving best/ and latest/. Where runs live on disk is
checkpoints.py's subject; the Trainer itself is trainer.py's.
"""

import json
import logging
import os
import tempfile

from domainfocus.settings import TINY_MODEL, ConfigError
logger = logging.getLogger("domainfocus")


def build_tiny_t5(train_file, input_column, target_column, seed, vocab_size=1000, extra_text=None,
                  max_piece_length=4):
    """A tiny T5 built on this machine: SentencePiece trained on the training text, small config.

    Used by --demo and the tests, so that nothing is downloaded. The tokenizer follows T5's
    layout (pad 0, eos 1, unk 2, 100 sentinels at the end of the vocabulary). bench.py and the
    trimming test add `extra_text` (a .txt file) and a large `vocab_size` to get an mT5-like
    vocabulary far larger than the data needs.
    """
    import sentencepiece
    import torch
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    from domainfocus.data import DataError, texts_of

    texts = list(texts_of(train_file, input_column, target_column))
    if extra_text:
        with open(extra_text, encoding="utf-8") as handle:
            texts += [line for line in handle if line.strip()]
    # Every character must be a piece of its own (what trimming and restoration assume), so the
    # vocabulary grows with the data: Chinese text easily has thousands of distinct characters.
    characters = len(set("".join(texts)) - set(" \t\n"))
    vocab_size = max(vocab_size, characters + 3 + characters // 4)
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "spiece.model"), "wb") as model_file:
            try:
                sentencepiece.SentencePieceTrainer.train(
                    sentence_iterator=iter(texts), model_writer=model_file, vocab_size=vocab_size, hard_vocab_limit=False,
                    model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                    # Short pieces, as in mT5's vocabulary: repetitive demo text would otherwise merge
                    # a whole phrase, term included, into one token and hide the term from the model.
                    max_sentencepiece_length=max_piece_length, num_threads=1, minloglevel=2,
                    max_sentence_length=100000,
                )
            except RuntimeError as error:
                raise DataError(f"{train_file}: the tiny demo model cannot build its tokenizer from this text "
                                f"({str(error).strip().splitlines()[-1]}); give a real model in MODEL_NAME_OR_PATH.") from None
        tokenizer = T5Tokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=128, d_kv=32, d_ff=512, num_layers=2, num_heads=4,
                      decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    return tokenizer, T5ForConditionalGeneration(config)


def build_tiny_mt5(texts, folder, seed=0, vocab_size=4000, d_model=64):
    """A tiny model shaped like published mT5, written to `folder` as a model folder that loads with
    from_pretrained: a SentencePiece unigram tokenizer with mT5's NFKC normalisation (`℃` is written
    `°C`), multi-character pieces and no byte fallback (characters it has not seen are <unk>), a gated
    feed-forward, and an LM head of its own with "tie_word_embeddings": false in config.json. Built
    from `texts` in seconds; the tests and bench.py use it to check what holds for real mT5 users."""
    import io

    import sentencepiece
    import torch
    from transformers import MT5Config, MT5ForConditionalGeneration, T5Tokenizer

    model_file = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model_file, vocab_size=vocab_size, hard_vocab_limit=False,
        model_type="unigram", character_coverage=0.9995, normalization_rule_name="nmt_nfkc", pad_id=0, eos_id=1,
        unk_id=2, bos_id=-1, num_threads=1, minloglevel=2, max_sentence_length=100000)
    with tempfile.TemporaryDirectory() as scratch:  # the SentencePiece model alone, as published mT5 ships it
        with open(os.path.join(scratch, "spiece.model"), "wb") as handle:
            handle.write(model_file.getvalue())
        tokenizer = T5Tokenizer.from_pretrained(scratch)
    torch.manual_seed(seed)
    config = MT5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=16, d_ff=2 * d_model, num_layers=2, num_heads=4,
                       feed_forward_proj="gated-gelu", decoder_start_token_id=tokenizer.pad_token_id,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = MT5ForConditionalGeneration(config)
    # A head of its own, initialised as Mesh TensorFlow's T5 v1.1 and mT5 heads are (std d_model ** -0.5).
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * d_model ** -0.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    path = os.path.join(folder, "config.json")
    with open(path, encoding="utf-8") as handle:
        saved = json.load(handle)
    with open(path, "w", encoding="utf-8") as handle:  # as published mT5 says it
        json.dump({**saved, "tie_word_embeddings": False}, handle, indent=2)
    return folder


def load_model(name, checkpoint, train_file, input_column, target_column, seed, weights=True, tokenizer=None):
    """Tokenizer and model from a hub name or folder; TINY_MODEL builds (or, resuming, reloads) the tiny T5.

    weights=False gives the model's shapes only (on the meta device, no memory, no weights read),
    enough to plan memory. A `tokenizer` given is used as is (mT5's takes seconds to load).
    """
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

    if name == TINY_MODEL and checkpoint:
        name = checkpoint
    elif name == TINY_MODEL:
        return build_tiny_t5(train_file, input_column, target_column, seed)
    local = os.path.isdir(name)  # a local folder never touches the network
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(name, local_files_only=local)
    if not weights:
        return tokenizer, model_shapes(AutoConfig.from_pretrained(name, local_files_only=local),
                                       separate_head(name, local))
    model = AutoModelForSeq2SeqLM.from_pretrained(name, local_files_only=local, use_safetensors=True)
    return tokenizer, model


def separate_head(name, local):
    """True when the checkpoint `name` has an LM head of its own, not tied to the input embedding.

    Published mT5 and T5 v1.1 say so in their config.json ("tie_word_embeddings": false) and store
    lm_head.weight; transformers 5's T5Config and MT5Config overwrite that flag with True when
    they are built, so the raw file and the weight names are read here.
    """
    from transformers import PretrainedConfig

    raw, _ = PretrainedConfig.get_config_dict(name, local_files_only=local)
    if raw.get("tie_word_embeddings") is False:
        return True
    if not local:
        return False
    from safetensors import safe_open

    for file_name in os.listdir(name):
        if file_name.endswith(".safetensors"):
            with safe_open(os.path.join(name, file_name), "numpy") as weights_file:
                if "lm_head.weight" in weights_file.keys():
                    return True
    return False


def model_shapes(config, untied_head):
    """The model on the meta device: its shapes without memory or weights, what the memory plan counts.
    Built from a config alone, transformers 5 ties T5's and mT5's LM head to the embedding; a
    checkpoint with a head of its own loads untied, so the plan gets a head of its own too
    (for mt5-base about 192 M parameters: 1.4 GiB of fp32 weights and gradients)."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(config)
        head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
        if untied_head and head.weight is embedding.weight:
            head.weight = torch.nn.Parameter(torch.empty_like(embedding.weight))
    return model


def model_saver(model, tokenizer):
    """best/ and latest/ hold only what from_pretrained needs: safetensors weights, config, tokenizer.
    With LoRA the weights are the merged full model, and the adapter alone goes to adapter/.
    `save(folder, weights)`: `weights` is what `save.gather()` returned, called by every process
    first (a sharded model's full weights are gathered onto the main process; None otherwise)."""
    from domainfocus.sharding import full_state_dict, is_sharded

    def save(folder, weights=None):
        if hasattr(model, "peft_config"):  # a peft model; checked without importing peft
            merged_model(model).save_pretrained(folder)
            model.save_pretrained(os.path.join(folder, "adapter"))
        else:
            model.save_pretrained(folder, state_dict=weights)
        tokenizer.save_pretrained(folder)

    save.gather = lambda: full_state_dict(model) if is_sharded(model) else None
    return save


def attach_lora(model, rank, alpha, dropout, targets, bf16=False):
    """LoRA adapters of `rank` (scale `alpha` / `rank`) on the layers named in `targets` that `model` has; every other
    weight is frozen, in bf16 when `bf16` (peft keeps the adapters in fp32). After trimming (the
    adapters never see the dropped rows). The returned model carries `base_checksum`, a checksum
    of the base weights taken here, on the CPU before training moves them to a GPU, and with bf16
    `full_precision_base`: the base weights as loaded, kept on the CPU so that best/ and latest/ merge
    the adapters into them and not into their bf16 rounding (4 bytes of host memory per parameter)."""
    import torch
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    given, targets = ",".join(targets), [name for name in targets if name in present]
    if not targets:
        raise ConfigError(f"LORA_TARGET_MODULES: none of LORA_TARGET_MODULES={given!r} is a "
                          "layer of this model; choose among its linear layers.")
    with torch.no_grad():
        checksum = sum(float(parameter.abs().sum(dtype=torch.float64)) for parameter in model.parameters())
    full_precision = None
    if bf16:  # the frozen base in bf16 halves its memory
        full_precision = {name: tensor.detach() for name, tensor in model.state_dict().items()}
        model = model.to(torch.bfloat16)
    lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="SEQ_2_SEQ_LM")
    model = get_peft_model(model, lora)
    # Gradient checkpointing recomputes layers from their inputs; with the embeddings frozen those
    # inputs need requires_grad, or no gradient reaches the adapters.
    model.enable_input_require_grads()
    model.base_checksum = checksum
    model.full_precision_base = full_precision
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("LoRA rank %d on %s: %.2f M of %.1f M parameters are trained (%.2f%%).", rank,
                ", ".join(sorted(targets)), trainable / 1e6, total / 1e6, 100 * trainable / total)
    return model


def merged_model(peft_model):
    """A plain model (no peft needed to load it) holding the base weights with the adapters added
    in, on the CPU in fp32, without touching the model being trained. (peft's merge_and_unload
    changes the trained model in place, and unmerging after a save would add rounding drift.)
    The base weights are the ones loaded, also where training keeps a bf16 copy, and an LM head of
    its own (mT5, T5 v1.1) stays its own: built from a config, transformers 5 ties it to the embedding."""
    import torch
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForSeq2SeqLM

    base = peft_model.get_base_model()
    loaded = getattr(peft_model, "full_precision_base", None) or {}

    def original(name, tensor):
        return loaded[name].float().cpu() if name in loaded else tensor.detach().float().cpu()

    state = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                weight = original(f"{name}.weight", module.base_layer.weight)
                state[f"{name}.weight"] = weight + module.get_delta_weight("default").float().cpu()
        for name, tensor in base.state_dict().items():
            if "lora_" not in name:
                name = name.replace(".base_layer.", ".")
                state.setdefault(name, original(name, tensor))
    with torch.device("meta"):
        plain = AutoModelForSeq2SeqLM.from_config(base.config)
    plain.load_state_dict(state, assign=True)
    untied = base.get_output_embeddings().weight is not base.get_input_embeddings().weight
    plain.tie_weights()  # the embeddings of encoder and decoder are the shared one, as in the base
    if untied:
        plain.get_output_embeddings().weight = torch.nn.Parameter(state["lm_head.weight"])
    plain.generation_config = base.generation_config
    return plain


def lora_problem(checkpoint, rank, alpha, targets):
    """Why `checkpoint` cannot go on with adapters of `rank` and `alpha` on `targets` (adapters of
    another shape cannot be loaded into these; rank 0: full fine-tuning), else None."""
    path = os.path.join(checkpoint, "adapter_config.json")
    saved = None
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
    if not saved and not rank:
        return None
    if not saved:
        return "it holds full weights, not LoRA adapters: set LORA_RANK=0 to resume it"
    if not rank:
        return f"it holds LoRA adapters of rank {saved['r']}: set LORA_RANK={saved['r']} to resume it"
    now = (rank, float(alpha), sorted(targets))
    before = (saved["r"], float(saved["lora_alpha"]), sorted(saved["target_modules"]))
    # Every T5 and mT5 has q, k, v, o and wo; whether it has wi or wi_0 / wi_1 shows once it is loaded
    # (adapter_problem).
    added = set(now[2]) - set(before[2]) - {"wi", "wi_0", "wi_1"}
    if now[0] != before[0] or now[1] != before[1] or not set(before[2]) <= set(now[2]) or added:
        return (f"its adapters have LORA_RANK={before[0]}, LORA_ALPHA={before[1]:g} on {','.join(before[2])}; "
                f"set those to resume it")
    return None


def adapter_problem(checkpoint, model):
    """Why the adapters of `checkpoint` do not fit the layers `model` (a fresh peft model) adapts, else
    None: their weights load only into the same layers."""
    with open(os.path.join(checkpoint, "adapter_config.json"), encoding="utf-8") as handle:
        saved = sorted(json.load(handle)["target_modules"])
    adapted = sorted(model.peft_config["default"].target_modules)
    if saved != adapted:
        return f"its adapters are on {','.join(saved)}, not on {','.join(adapted)}: set LORA_TARGET_MODULES={','.join(saved)!r}"
    return None


def trim_vocabulary(tokenizer, model, texts, folder):
    """Keep only the tokens `texts` use; returns (tokenizer, model) with the smaller vocabulary.

    Kept: every token the texts tokenize to, every special and sentinel token, and a safety set
    of each character seen as a token of its own (with and without the word-start mark), so
    that unseen words made of known characters still tokenize. The SentencePiece (Unigram)
    vocabulary in tokenizer.json keeps its order and scores, so text made of kept tokens is
    segmented exactly as before: removing pieces a best segmentation does not use cannot change
    it. The embedding and LM-head rows are cut to match; the new tokenizer is written to `folder`
    and loaded back with from_pretrained, so what is saved later is consistent.
    """
    import torch

    description = json.loads(tokenizer.backend_tokenizer.to_str())
    if description["model"]["type"] != "Unigram":
        raise ValueError(f"TRIM_VOCAB supports SentencePiece (Unigram) tokenizers such as T5's and mT5's, "
                         f"not {description['model']['type']}.")
    keep = {token["id"] for token in description["added_tokens"]}
    characters = set()
    for start in range(0, len(texts), 1000):
        batch = texts[start:start + 1000]
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            keep.update(ids)
        characters.update(*map(set, batch))
    vocabulary = tokenizer.get_vocab()
    keep.update(vocabulary[piece] for character in characters for piece in (character, "\u2581" + character)
                if piece in vocabulary)
    old_ids = sorted(keep)
    new_id = {old: new for new, old in enumerate(old_ids)}
    description["model"]["vocab"] = [description["model"]["vocab"][old] for old in old_ids]
    description["model"]["unk_id"] = new_id[description["model"]["unk_id"]]
    for token in description["added_tokens"]:
        token["id"] = new_id[token["id"]]
    for special in (description.get("post_processor") or {}).get("special_tokens", {}).values():
        special["ids"] = [new_id[old] for old in special["ids"]]
    tokenizer.save_pretrained(folder)
    for name in os.listdir(folder):  # the trimmed tokenizer.json is the only source of the vocabulary
        if name.endswith(".model"):
            os.remove(os.path.join(folder, name))
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as handle:
        json.dump(description, handle, ensure_ascii=False)
    from transformers import AutoTokenizer

    trimmed = AutoTokenizer.from_pretrained(folder)
    index = torch.tensor(old_ids)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    if not tied:
        output = torch.nn.Linear(model.config.d_model, len(old_ids), bias=False)
        output.weight.data = model.get_output_embeddings().weight.data[index].clone()
        model.set_output_embeddings(output)
    embedding = torch.nn.Embedding(len(old_ids), model.config.d_model)
    embedding.weight.data = model.get_input_embeddings().weight.data[index].clone()
    model.set_input_embeddings(embedding)
    if tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    model.config.vocab_size = len(old_ids)
    return trimmed, model


def trim_model(tokenizer, model, texts):
    """TRIM_VOCAB: trim to the tokens of `texts` (those of the training and validation files), and log
    what it saved."""
    before, tokens = model.num_parameters(), len(tokenizer)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer, model = trim_vocabulary(tokenizer, model, texts, folder)
    logger.info("TRIM_VOCAB: %d -> %d tokens, %.1f M -> %.1f M parameters.", tokens, len(tokenizer), before / 1e6,
                model.num_parameters() / 1e6)
    return tokenizer, model
