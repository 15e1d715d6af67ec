"""TRIM_VOCAB: the tiny T5 given a vocabulary far larger than the data needs, trained before and after trimming."""

import os

from benchmarks.common import print_table, recipe_in_child, save_model, synthetic_corpus, synthetic_lexicon


def large_vocabulary_folder(folder, train_file):
    """The tiny T5 with a vocabulary of about 27,000 tokens instead of about 650: SentencePiece also
    trained on 3 MB of synthetic Chinese, as mT5's vocabulary covers far more than one domain uses."""
    from domainfocus.modeling import build_tiny_t5

    _, terms = synthetic_lexicon(folder)
    corpus = synthetic_corpus(folder, 3, terms)
    tokenizer, model = build_tiny_t5(train_file, "inputs", "targets", 42, vocab_size=30000, extra_text=corpus,
                                     max_piece_length=16)
    return save_model(os.path.join(folder, "large-vocabulary"), tokenizer, model)


def bench_trim(options, folder):
    """TRIM_VOCAB on a model whose vocabulary is far larger than the data needs: parameters, speed, memory."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from domainfocus.data import first_examples
    from domainfocus.modeling import model_saver, trim_vocabulary

    large = large_vocabulary_folder(folder, options.train_file)
    tokenizer, model = AutoTokenizer.from_pretrained(large), AutoModelForSeq2SeqLM.from_pretrained(large)
    counts = {"large": (len(tokenizer), model.num_parameters())}
    texts = [text for path in (options.train_file, options.valid_file)
             for pair in first_examples(path, "inputs", "targets", float("inf")) for text in pair]
    tokenizer, model = trim_vocabulary(tokenizer, model, texts, os.path.join(folder, "trim-work"))
    trimmed = os.path.join(folder, "trimmed")
    model_saver(model, tokenizer)(trimmed)
    counts["trimmed"] = (len(tokenizer), model.num_parameters())
    results = {}
    for name, path in (("large", large), ("trimmed", trimmed)):
        results[name] = recipe_in_child(options, folder, model=path, budget=options.budget / 2)
    print(f"\nTRIM_VOCAB, this tool's recipe for {options.budget / 2:.0f} s each:\n")
    print_table(["vocabulary", "tokens", "parameters", "steps/s", "real tokens/s", "peak memory", "span_accuracy"],
                [(name, f"{counts[name][0]:,}", f"{counts[name][1] / 1e6:.2f} M",
                  f"{result['steps'] / result['seconds']:.2f}", f"{result['real_tokens'] / result['seconds']:.0f}",
                  f"{result['peak_mb']:.0f} MB", f"{result['span_accuracy']:.3f}") for name, result in results.items()])
