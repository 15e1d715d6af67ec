"""Restore masked or damaged text with a trained model, and score it when the answers are known.

    python restore.py --model runs/demo/best --input damaged.txt --output restored.jsonl
    python restore.py --model runs/demo/best --input demo/valid.jsonl --output scored.jsonl

Input: `.jsonl` with an "inputs" field in sentinel format (and optionally "targets"), or `.txt`
with one text per line where a run of mask markers (default □) marks each lost span.
Output: `.jsonl`, one object per input line with the input, "prediction" (the generated span
sequence), "restored" (the text with every span filled in) and "targets" when given. With
targets, the restoration metrics are printed as one JSON object on the last line of stdout.
Everything runs locally; the model folder is read with from_pretrained and no network.
"""

import argparse
import json
import os
import re
import sys

from spans import (MAX_SENTINELS, SENTINEL, SPECIAL_TOKENS, build_targets, fill_spans, parse_spans,
                   restoration_metrics, sentinel)


class RestoreError(ValueError):
    """A problem the user can fix: bad path, bad file, bad option."""


def generate(model, tokenizer, texts, batch_size=16, max_input_length=512, max_new_tokens=256, progress=None):
    """Greedy generation for every text; returns decoded sequences with the sentinels kept.

    Texts are batched by length (less padding), and the results returned in the input order.
    """
    import torch

    order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
    results = [None] * len(texts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            batch = tokenizer([texts[index] for index in chosen], return_tensors="pt", padding=True,
                              truncation=True, max_length=max_input_length).to(device)
            output = model.generate(**batch, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
            for index, sequence in zip(chosen, output):
                results[index] = tokenizer.decode(sequence, skip_special_tokens=False)
            if progress is not None:
                progress.update(len(chosen))
    model.train(was_training)
    return results


def markers_to_sentinels(text, marker):
    """Each run of `marker` becomes the next sentinel (numbered on past 99 if need be)."""
    runs = re.compile("(?:" + re.escape(marker) + ")+")
    numbers = iter(range(len(text)))
    return runs.sub(lambda match: sentinel(next(numbers)), text)


def split_into_pieces(text):
    """[(piece, first sentinel number)]: pieces of at most 100 sentinels each, renumbered from 0.

    T5 tokenizers know only <extra_id_0> ... <extra_id_99>; a longer text is restored piece by piece.
    """
    pieces, current, count, offset, position = [], [], 0, 0, 0
    for match in SENTINEL.finditer(text):
        if count == MAX_SENTINELS:
            pieces.append(("".join(current), offset))
            current, count, offset = [], 0, offset + MAX_SENTINELS
        current.append(text[position:match.start()] + sentinel(count))
        count += 1
        position = match.end()
    current.append(text[position:])
    pieces.append(("".join(current), offset))
    return pieces


def read_examples(path, marker, input_column, target_column):
    """[(original input, input in sentinel format, targets or None)] from a .jsonl or .txt file."""
    if not os.path.isfile(path):
        raise RestoreError(f"--input {path}: no such file.")
    examples = []
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise RestoreError(f"{path}:{line_number}: not UTF-8 text; re-save the file as UTF-8.") from None
            if not line.strip():
                continue
            if path.endswith(".jsonl"):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise RestoreError(f"{path}:{line_number}: invalid JSON ({error.msg}).") from None
                if not isinstance(record, dict) or not isinstance(record.get(input_column), str):
                    raise RestoreError(f"{path}:{line_number}: needs a string field \"{input_column}\".")
                examples.append((record[input_column], record[input_column], record.get(target_column)))
            else:
                # A line without markers has nothing to restore and is passed through unchanged.
                examples.append((line, markers_to_sentinels(line, marker) if marker in line else None, None))
    if not examples:
        raise RestoreError(f"--input {path}: no text to restore.")
    return examples


def assemble(sentinel_text, pieces, generated):
    """(prediction, restored text) for one input from the generated outputs of its pieces."""
    if sentinel_text is None:
        return "", None
    if not SENTINEL.search(sentinel_text):  # plain text-to-text: the output is the whole text
        whole = SPECIAL_TOKENS.sub("", next(generated)).strip()
        return whole, whole
    spans = {}
    for piece, offset in pieces:
        piece_spans = parse_spans(next(generated))
        for number in range(len(SENTINEL.findall(piece))):
            spans[offset + number] = piece_spans.get(number, "")
    prediction = build_targets([spans[number] for number in range(len(spans))])
    return prediction, fill_spans(sentinel_text, spans)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="folder written by train.py (best/ or latest/)")
    parser.add_argument("--input", required=True, help=".jsonl with inputs (and targets) or .txt with mask markers")
    parser.add_argument("--output", required=True, help=".jsonl to write")
    parser.add_argument("--marker", default="□", help="mask marker in .txt input (default □)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-input-length", type=int, default=512, help="tokens")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens generated per text")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    options = parser.parse_args(argv)
    if not os.path.isdir(options.model) or not os.path.isfile(os.path.join(options.model, "config.json")):
        raise RestoreError(f"--model {options.model}: not a model folder (no config.json); "
                           "point it at OUTPUT_DIR/best or OUTPUT_DIR/latest.")
    if not options.marker:
        raise RestoreError("--marker must not be empty.")
    examples = read_examples(options.input, options.marker, "inputs", "targets")

    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    device = options.device if options.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(options.model, local_files_only=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(options.model, local_files_only=True,
                                                  use_safetensors=True).to(device)
    split = [split_into_pieces(sentinel_text) if sentinel_text is not None else []
             for _, sentinel_text, _ in examples]
    texts = [piece for pieces in split for piece, _ in pieces]
    with tqdm(total=len(texts), desc="Restoring", unit="text", file=sys.stderr) as progress:
        generated = iter(generate(model, tokenizer, texts, options.batch_size, options.max_input_length,
                                  options.max_new_tokens, progress))
    scored_predictions, scored_targets = [], []
    with open(options.output + ".tmp", "w", encoding="utf-8") as handle:
        for (text, sentinel_text, targets), pieces in zip(examples, split):
            prediction, restored = assemble(sentinel_text, pieces, generated)
            record = {"inputs": text, "prediction": prediction, "restored": text if restored is None else restored}
            if isinstance(targets, str):
                record["targets"] = targets
                scored_predictions.append(prediction)
                scored_targets.append(targets)
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(options.output + ".tmp", options.output)
    print(f"Restored {len(examples)} texts -> {options.output}", file=sys.stderr)
    if scored_targets:
        metrics = restoration_metrics(scored_predictions, scored_targets)
        print(json.dumps({"examples": len(scored_targets), **{k: round(v, 4) for k, v in metrics.items()}}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RestoreError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
