"""Restoration by a trained model: decoding settings side by side, what confidence says, and whole
lines of text restored in windows of whole sentences."""

import os
import random
import re
import subprocess
import sys
import time

from benchmarks.common import HERE, print_table


def trained_demo_model(folder):
    """best/ of `python train.py --demo` trained here (about 2 minutes on 2 cores)."""
    output = os.path.join(folder, "demo-run")
    subprocess.run([sys.executable, os.path.join(HERE, "train.py"), "--demo", f"--OUTPUT_DIR={output}"], check=True,
                   cwd=HERE, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HOME": os.path.join(folder, "hf-home")})
    return os.path.join(output, "best")


def bench_restore(options, folder, examples=300, threshold=0.5):
    """Decoding settings side by side on one trained model (--model, else the demo trained here) and
    the validation examples."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from domainfocus.damage import from_sentinels, target_lengths
    from domainfocus.data import first_examples
    from domainfocus.restoration import Decoding, Restorer
    from domainfocus.spans import normalize, parse_spans, restoration_metrics

    print()
    model_folder = options.model or trained_demo_model(folder)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_folder).eval()
    saved = Decoding.of_model(model)
    validation = first_examples(options.valid_file, "inputs", "targets", examples)
    # The lexicon prepare.py would have masked with: every term masked in the training data.
    lexicon = sorted({text for _, targets in first_examples(options.train_file, "inputs", "targets", 10 ** 9)
                      for text in parse_spans(targets).values() if text})
    targets = [target for _, target in validation]
    wanted = [normalize(text) for target in targets for _, text in sorted(parse_spans(target).items()) if text]
    print(f"Restoration on {len(validation)} validation examples ({len(wanted)} spans), model {model_folder}, "
          f"lexicon of {len(lexicon)} terms from the training targets:\n")
    # And a large one: the same terms shuffled among 20,000 made of the training text's characters (fixed
    # seed), so that no search can win by reading the file in order.
    rng = random.Random(0)
    characters = sorted({character for term in lexicon for character in term if not character.isspace()})
    large = lexicon + ["".join(rng.choices(characters, k=rng.randint(2, 8))) for _ in range(20_000)]
    rng.shuffle(large)
    # Each beam count with and without the lengths, so that the table shows what the length alone buys;
    # then the lexicon, with the prior on its terms (lexicon_bonus) at several weights.
    settings = [(f"{'length-aware' if aware else 'free length'}, {beams} beam{'s' if beams > 1 else ''}", beams, aware,
                 (), 0.0) for beams in (1, 2, 4, 8) for aware in (False, True)]
    settings += [(f"length-aware, 4 beams + lexicon, bonus {bonus:g}", 4, True, lexicon, bonus)
                 for bonus in (0.0, 1.0, 2.0, 4.0, 8.0)]
    settings += [("length-aware, 4 beams + lexicon in 20,000 terms, bonus 0", 4, True, large, 0.0),
                 ("length-aware, 4 beams + lexicon in 20,000 terms, bonus 4", 4, True, large, 4.0)]
    spans_by_row, cut_searches, rows = {}, 0, []
    for name, beams, aware, terms, bonus in settings:
        decoding = Decoding(num_beams=beams, length_aware=aware, max_input_length=saved.max_input_length,
                            max_new_tokens=saved.max_new_tokens, lexicon_bonus=bonus)
        restorer = Restorer(model, tokenizer, decoding, terms)
        documents = [from_sentinels(inputs, target_lengths(target)) for inputs, target in validation]
        started = time.perf_counter()
        results = restorer.restore_documents(documents, alternatives=3)
        seconds = time.perf_counter() - started
        scores = restoration_metrics([result["prediction"] for result in results], targets)
        spans_by_row[name] = [span for result in results for span in result["spans"]]
        rows.append((name, f"{scores['span_accuracy']:.3f}", f"{scores['char_accuracy']:.3f}",
                     f"{scores['exact_match']:.3f}", f"{len(spans_by_row[name]) / seconds:.0f}"))
        cut_searches += restorer.searches_cut
    print_table(["decoding", "span_accuracy", "char_accuracy", "exact_match", "spans/s"], rows)
    print(f"\nSpans whose lexicon search reached its safety limit (the choice then is not proven exact): "
          f"{cut_searches}.")
    print(f"\nDoes confidence mean something? Spans of each setting split at confidence {threshold}:\n")
    print_table(["decoding", f"spans ≥ {threshold}", "their accuracy", f"spans < {threshold}", "their accuracy"],
                [confidence_row(name, spans, wanted, threshold) for name, spans in spans_by_row.items()])
    whole_lines(model, tokenizer, saved, validation, spans_by_row["length-aware, 4 beams"], wanted)
    archive_speed(model_folder, model, tokenizer, saved, validation, large, folder)


def confidence_row(name, spans, wanted, threshold):
    """How many spans reach `threshold` confidence and how many of them are right; the same below it."""
    from domainfocus.spans import normalize

    right = [normalize(span["text"]) == want for span, want in zip(spans, wanted)]
    high = [ok for ok, span in zip(right, spans) if span["confidence"] is not None and span["confidence"] >= threshold]
    low = [ok for ok, span in zip(right, spans) if span["confidence"] is None or span["confidence"] < threshold]
    return name, len(high), accuracy(high), len(low), accuracy(low)


def accuracy(right):
    return f"{sum(right) / len(right):.3f}" if right else "-"


def whole_lines(model, tokenizer, saved, validation, separate, wanted):
    """The same examples as marker text joined, a space between them, into lines of about 3,000
    characters, restored with the windows the model's saved settings give, against `separate`: the
    spans restored one example at a time."""
    from domainfocus.damage import from_markers
    from domainfocus.lengths import source_length
    from domainfocus.restoration import Decoding, Restorer
    from domainfocus.spans import normalize, parse_spans
    from domainfocus.windows import cut_windows

    lines, line, truth = [], "", []
    for inputs, target in validation:
        spans = parse_spans(target)
        line += (" " if line else "") + re.sub(r"<extra_id_(\d+)>", lambda match: "□" * source_length(
            spans.get(int(match.group(1)), "")), inputs)
        truth += [normalize(text) for _, text in sorted(spans.items()) if text]
        if len(line) >= 3000:
            lines, line = lines + [line], ""
    lines += [line] if line else []
    decoding = Decoding(num_beams=4, max_input_length=saved.max_input_length, max_new_tokens=saved.max_new_tokens,
                        whole_tokens=saved.whole_tokens, window_tokens=saved.window_tokens)
    restorer = Restorer(model, tokenizer, decoding)
    windows = [window for text in lines for window in cut_windows(from_markers(text), tokenizer, decoding)]
    joined = [span for result in restorer.restore(lines) for span in result["spans"]]
    exact_lengths = all(source_length(span["text"]) == part.length for span, part in
                        zip(joined, [part for text in lines for part in from_markers(text).spans]) if span["text"])
    sizes = sorted(len(tokenizer(window.text)["input_ids"]) for window in windows)
    print(f"\nThe same spans as {len(lines)} lines of about 3,000 characters, restored in {len(windows)} windows of "
          f"whole sentences (window_tokens={saved.window_tokens}, whole_tokens={saved.whole_tokens}; median window "
          f"{sizes[len(sizes) // 2]} tokens, largest {sizes[-1]}; length-aware, 4 beams): span_accuracy "
          f"{sum(normalize(span['text']) == want for span, want in zip(joined, truth)) / len(truth):.3f} against "
          f"{sum(normalize(span['text']) == want for span, want in zip(separate, wanted)) / len(wanted):.3f} one "
          f"example at a time; {sum(span['confidence'] is None for span in joined)} of {len(joined)} left marked; "
          f"every restored span of exactly its length: {exact_lengths}.")


def archive_speed(model_folder, model, tokenizer, saved, validation, lexicon, folder):
    """Documents and spans per second for an archive, side by side in one run: plain model.generate
    with 4 beams (free text, no lengths: the baseline), greedy and 4-beam length-aware restoration,
    the same with the 20,000-term lexicon, and restore.py on the same examples in one process and
    split over two under torchrun (wall time of the whole command, start-up included)."""
    import json

    from domainfocus.damage import from_sentinels, target_lengths
    from domainfocus.restoration import Decoding, Restorer

    documents = [from_sentinels(inputs, target_lengths(target)) for inputs, target in validation]
    spans = sum(len(document.spans) for document in documents)
    rows, seconds = [], {}

    def timed(name, run):
        started = time.perf_counter()
        run()
        seconds[name] = time.perf_counter() - started

    def generate_plainly():
        for start in range(0, len(validation), saved.batch_size):
            batch = tokenizer([inputs for inputs, _ in validation[start:start + saved.batch_size]],
                              return_tensors="pt", padding=True)
            model.generate(**batch, num_beams=4, max_new_tokens=saved.max_new_tokens, do_sample=False)

    timed("plain model.generate, 4 beams (no lengths, no spans)", generate_plainly)
    # The lexicon's search proves every candidate it shows: with 3 alternatives (restore.py's default) the
    # four likeliest, with none only the choice, which is exact either way.
    searches_cut = 0
    for name, beams, terms, alternatives in (
            ("greedy, length-aware", 1, (), 3), ("4 beams, length-aware", 4, (), 3),
            ("4 beams, length-aware + lexicon of 20,000 terms", 4, lexicon, 3),
            ("4 beams, length-aware + lexicon of 20,000 terms, --alternatives 0", 4, lexicon, 0)):
        restorer = Restorer(model, tokenizer, Decoding(num_beams=beams, max_input_length=saved.max_input_length,
                                                       max_new_tokens=saved.max_new_tokens), terms)
        timed(name, lambda: restorer.restore_documents(documents, alternatives=alternatives))
        searches_cut += restorer.searches_cut
    source = os.path.join(folder, "archive.jsonl")
    with open(source, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"inputs": inputs}, ensure_ascii=False) + "\n" for inputs, _ in validation)
    command = [os.path.join(HERE, "restore.py"), "--model", model_folder, "--input", source, "--num-beams", "4"]
    for name, launcher in (("restore.py, 4 beams, one process (with start-up)", [sys.executable]),
                           ("restore.py, 4 beams, 2 processes under torchrun (with start-up)",
                            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--master_port=29591"])):
        output = os.path.join(folder, f"archive-{len(seconds)}.jsonl")
        timed(name, lambda: subprocess.run(launcher + command + ["--output", output], check=True, cwd=HERE,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    reference = seconds["4 beams, length-aware"]
    for name, value in seconds.items():
        rows.append((name, f"{len(documents) / value:.1f}", f"{spans / value:.0f}", f"×{value / reference:.2f}"))
    print(f"\nAn archive's speed: the same {len(documents)} validation examples ({spans} spans), documents and "
          f"spans per second, time against 4-beam length-aware restoration:\n")
    print_table(["setting", "documents/s", "spans/s", "time"], rows)
    print(f"\nThe lexicon's choice is exact where its search stays under the safety limit: {searches_cut} of "
          f"{2 * spans} searches reached it.")
