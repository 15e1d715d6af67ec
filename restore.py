"""Restore masked or damaged text with a trained model, and score it when the answers are known.

    python restore.py --model runs/demo/best --input damaged.txt --output restored.jsonl
    python restore.py --model runs/demo/best --input demo/valid.jsonl --output scored.jsonl
    cat damaged.txt | python restore.py --model runs/demo/best --input - --output -
    python restore.py --model runs/demo/best --lexicon demo/lexicon.txt --tune-lexicon-bonus \
        --input demo/valid.jsonl --output scored.jsonl    # choose the lexicon's prior on validation

Input (by extension, or --format): `.txt` with one text per line (or, with --documents paragraphs,
blank-line-separated blocks) where each mask marker (default □) stands for one lost character;
`.jsonl` with "inputs" in sentinel format, optionally "lengths" (one integer per sentinel) and
"targets"; `.csv` / `.tsv` with the text in --text-column. `-` reads standard input as text lines.
Output: JSON Lines, one object per input text, written as it goes (see README, "Using the trained
model"). With targets, the restoration metrics are the last line of standard output.
A thin layer over domainfocus/restoration.py; everything runs locally, nothing is downloaded.
"""

import argparse
import csv
import io
import json
import os
import signal
import sys
import tempfile

from domainfocus.damage import from_markers, from_sentinels, target_lengths
from domainfocus.restoration import Restorer
from domainfocus.spans import SENTINEL, restoration_metrics

FORMATS = ("txt", "jsonl", "csv", "tsv")


class RestoreError(ValueError):
    """A problem the user can fix: bad path, bad file, bad option."""


def input_format(path, given):
    if given:
        return given
    if path == "-":
        return "txt"
    extension = os.path.splitext(path)[1].lower().lstrip(".")
    if extension not in FORMATS:
        raise RestoreError(f"--input {path}: unknown file type '.{extension}'; use .txt, .jsonl, .csv or .tsv, "
                           "or name the format with --format.")
    return extension


def lines_of(path):
    """(line number, text) of a UTF-8 file or of standard input, line ends removed."""
    handle = sys.stdin.buffer if path == "-" else open(path, "rb")
    with handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                yield line_number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise RestoreError(f"{path}:{line_number}: not UTF-8 text; re-save the file as UTF-8.") from None


def read_documents(path, options):
    """[(Document, targets or None)] from the input, in order."""
    if path != "-" and not os.path.isfile(path):
        raise RestoreError(f"--input {path}: no such file.")
    kind = input_format(path, options.format)
    marked = lambda text: from_markers(text, options.marker, options.any_length)  # noqa: E731
    examples = []
    if kind == "jsonl":
        for line_number, line in lines_of(path):
            if line.strip():
                examples.append(jsonl_example(path, line_number, line, options.any_length))
    elif kind in ("csv", "tsv"):
        # One string, so that a quoted field may span lines as CSV allows.
        rows = csv.DictReader(io.StringIO("\n".join(line for _, line in lines_of(path))),
                              delimiter="," if kind == "csv" else "\t")
        if options.text_column not in (rows.fieldnames or []):
            raise RestoreError(f"--input {path}: no column \"{options.text_column}\" (found {rows.fieldnames}); "
                               "name the text column with --text-column.")
        examples = [(marked(row[options.text_column] or ""), None) for row in rows]
    elif options.documents == "paragraphs":
        paragraph = []
        for _, line in list(lines_of(path)) + [(0, "")]:
            if line.strip():
                paragraph.append(line)
            elif paragraph:
                examples.append((marked("\n".join(paragraph)), None))
                paragraph = []
    else:
        examples = [(marked(line), None) for _, line in lines_of(path) if line.strip()]
    if not examples:
        raise RestoreError(f"--input {path}: no text to restore.")
    return examples


def jsonl_example(path, line_number, line, any_length):
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise RestoreError(f"{path}:{line_number}: invalid JSON ({error.msg}).") from None
    if not isinstance(record, dict) or not isinstance(record.get("inputs"), str):
        raise RestoreError(f"{path}:{line_number}: needs a string field \"inputs\".")
    targets = record.get("targets") if isinstance(record.get("targets"), str) else None
    count = len(SENTINEL.findall(record["inputs"]))
    lengths = record.get("lengths")
    if lengths is not None and (not isinstance(lengths, list) or len(lengths) != count or not all(
            length is None or (isinstance(length, int) and not isinstance(length, bool) and length > 0)
            for length in lengths)):
        raise RestoreError(f"{path}:{line_number}: \"lengths\" must list one positive integer (or null) per "
                           f"sentinel ({count} here).")
    if lengths is None and targets is not None and SENTINEL.search(targets):
        lengths = target_lengths(targets)  # scoring: the targets show how many characters each gap lost
        lengths += [None] * (count - len(lengths))
    return from_sentinels(record["inputs"], None if any_length else lengths), targets


def output_handle(path):
    if path == "-":
        return sys.stdout
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise RestoreError(f"--output {path}: the folder {folder} does not exist.")
    return open(path, "w", encoding="utf-8")


def parse_options(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="folder written by train.py (best/ or latest/)")
    parser.add_argument("--input", required=True, help=".txt, .jsonl, .csv, .tsv, or - for standard input")
    parser.add_argument("--output", required=True, help=".jsonl to write, or - for standard output")
    parser.add_argument("--format", choices=FORMATS, help="input format when the extension does not say it")
    parser.add_argument("--text-column", default="text", help="column holding the text in .csv / .tsv input")
    parser.add_argument("--documents", choices=("lines", "paragraphs"), default="lines",
                        help="in .txt: one text per line, or blank-line-separated paragraphs (OCR breaks lines)")
    parser.add_argument("--marker", default="□", help="mask marker, one per lost character (default □)")
    parser.add_argument("--any-length", action="store_true", help="marker runs do not show how many characters were lost")
    parser.add_argument("--num-beams", type=int, help="beams (default: as the model was evaluated in training)")
    parser.add_argument("--alternatives", type=int, default=3, help="other candidates listed per span (default 3)")
    parser.add_argument("--review-below", type=float, help="flag restorations with confidence below this for review")
    parser.add_argument("--lexicon", help="term list (as for prepare.py) whose fitting terms compete as candidates")
    parser.add_argument("--lexicon-bonus", type=float, help="log-probability added to lexicon terms when candidates "
                        "are ranked (default: the model's saved one, 0 unless tuned); confidence stays the model's")
    parser.add_argument("--tune-lexicon-bonus", action="store_true", help="with --lexicon and --input holding targets "
                        "(validation that shares no text with training): try bonuses, save the best with the model")
    parser.add_argument("--batch-size", type=int, default=16, help="windows decoded together")
    parser.add_argument("--max-input-length", type=int, help="tokens per window (default: the model's MAX_INPUT_LENGTH)")
    parser.add_argument("--max-new-tokens", type=int, help="tokens generated per window (default: MAX_TARGET_LENGTH)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    options = parser.parse_args(argv)
    if not os.path.isdir(options.model) or not os.path.isfile(os.path.join(options.model, "config.json")):
        raise RestoreError(f"--model {options.model}: not a model folder (no config.json); "
                           "point it at OUTPUT_DIR/best or OUTPUT_DIR/latest.")
    if not options.marker:
        raise RestoreError("--marker must not be empty.")
    for name in ("num_beams", "batch_size", "max_input_length", "max_new_tokens"):
        if getattr(options, name) is not None and getattr(options, name) < 1:
            raise RestoreError(f"--{name.replace('_', '-')} must be at least 1.")
    if options.alternatives < 0:
        raise RestoreError("--alternatives must not be negative.")
    if options.review_below is not None and not 0 <= options.review_below <= 1:
        raise RestoreError("--review-below is a confidence between 0 and 1, e.g. 0.5.")
    if options.lexicon_bonus is not None and not 0 <= options.lexicon_bonus <= 100:
        raise RestoreError("--lexicon-bonus is a log-probability between 0 and 100, e.g. 2.")
    if options.tune_lexicon_bonus and not options.lexicon:
        raise RestoreError("--tune-lexicon-bonus needs --lexicon: the terms whose bonus is tuned.")
    return options


BONUSES = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)  # log-probability: a term may win against a text up to e^8 times likelier


def tune_lexicon_bonus(restorer, examples, model_folder):
    """Restore `examples` (which must hold targets) with each of BONUSES, print span_accuracy for each,
    and keep the best (the smallest among equals) in the model folder's generation_config.json."""
    scored = [(document, targets) for document, targets in examples if targets is not None]
    if not scored:
        raise RestoreError("--tune-lexicon-bonus needs --input with targets (.jsonl with inputs and targets).")
    accuracy = {}
    for bonus in BONUSES:
        restorer.decoding.lexicon_bonus = bonus
        results = restorer.restore_documents([document for document, _ in scored])
        accuracy[bonus] = restoration_metrics([result["prediction"] for result in results],
                                              [targets for _, targets in scored])["span_accuracy"]
        print(f"lexicon bonus {bonus:g}: span_accuracy {accuracy[bonus]:.4f}", file=sys.stderr)
    best = max(BONUSES, key=lambda bonus: (accuracy[bonus], -bonus))
    restorer.decoding.lexicon_bonus = best
    restorer.decoding.save_to(restorer.model)
    folder = tempfile.mkdtemp(dir=model_folder)  # written whole, then swapped in: never half a file
    restorer.model.generation_config.save_pretrained(folder)
    os.replace(os.path.join(folder, "generation_config.json"), os.path.join(model_folder, "generation_config.json"))
    os.rmdir(folder)
    print(f"Saved lexicon bonus {best:g} (span_accuracy {accuracy[best]:.4f} on {len(scored)} examples, "
          f"{accuracy[0.0]:.4f} without) in {model_folder}/generation_config.json.", file=sys.stderr)


def main(argv=None):
    options = parse_options(argv)
    examples = read_documents(options.input, options)
    lexicon = []
    if options.lexicon:
        from domainfocus.masking import PrepareError, read_lexicon

        try:
            lexicon = read_lexicon(options.lexicon)
        except PrepareError as error:
            raise RestoreError(f"--lexicon {error}") from None
    handle = output_handle(options.output)
    from tqdm.auto import tqdm

    restorer = Restorer.load(options.model, options.device, lexicon, num_beams=options.num_beams,
                             batch_size=options.batch_size, max_input_length=options.max_input_length,
                             max_new_tokens=options.max_new_tokens, lexicon_bonus=options.lexicon_bonus)
    if options.tune_lexicon_bonus:
        tune_lexicon_bonus(restorer, examples, options.model)
    counts = {"restored": 0, "left marked": 0, "flagged for review": 0}
    scored_predictions, scored_targets = [], []
    written = 0
    try:
        with tqdm(total=len(examples), desc="Restoring", unit="text", file=sys.stderr) as progress:
            for start in range(0, len(examples), options.batch_size):  # written as it goes
                chunk = examples[start:start + options.batch_size]
                results = restorer.restore_documents([document for document, _ in chunk], options.alternatives,
                                                     options.review_below)
                lines = []
                for (document, targets), result in zip(chunk, results):
                    tally(counts, result)
                    prediction = result.pop("prediction")
                    if targets is not None:
                        result.update(prediction=prediction, targets=targets)
                        scored_predictions.append(prediction)
                        scored_targets.append(targets)
                    lines.append(json.dumps(result, ensure_ascii=False) + "\n")
                handle.write("".join(lines))  # whole lines only, so an interrupt never leaves half of one
                handle.flush()
                written += len(chunk)
                progress.update(len(chunk))
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"Interrupted: {written} of {len(examples)} texts written to {options.output} (complete lines); "
              f"the rest were not restored.", file=sys.stderr)
        return 130
    finally:
        if handle is not sys.stdout:
            handle.close()
    print(f"Restored {len(examples)} texts -> {options.output}: {counts['restored']} spans restored, "
          f"{counts['left marked']} left marked, {counts['flagged for review']} flagged for review.", file=sys.stderr)
    if restorer.searches_cut:
        print(f"{restorer.searches_cut} spans reached the lexicon search's limit: their restoration is the best "
              "candidate found, not proven the best of the lexicon.", file=sys.stderr)
    if scored_targets:
        metrics = restoration_metrics(scored_predictions, scored_targets)
        print(json.dumps({"examples": len(scored_targets), **{k: round(v, 4) for k, v in metrics.items()}}))
    return 0


def tally(counts, result):
    for span in result["spans"]:
        counts["restored" if span["confidence"] is not None else "left marked"] += 1
        counts["flagged for review"] += span["review"]
    counts["flagged for review"] += result.get("review", False)  # a text-to-text rewrite cut short


if __name__ == "__main__":
    # Python leaves SIGINT ignored when it starts ignored (a background job of a shell script, for
    # one): Ctrl+C or `kill -INT` must still stop restoring with complete lines, as promised.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sys.exit(main())
    except RestoreError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # before the first text was written
        print("Interrupted before any text was restored; nothing was written.", file=sys.stderr)
        sys.exit(130)
