"""Restore masked or damaged text with a trained model, and score it when the answers are known.

    python restore.py --model runs/demo/best --input damaged.txt --output restored.jsonl
    python restore.py --model runs/demo/best --input demo/valid.jsonl --output scored.jsonl
    cat damaged.txt | python restore.py --model runs/demo/best --input - --output -
    python restore.py --model runs/demo/best --lexicon demo/lexicon.txt --tune-lexicon-bonus \
        --input demo/valid.jsonl --output scored.jsonl    # choose the lexicon's prior on validation

    python restore.py --model runs/demo/best --input page.xml --output page.restored.xml --html review.html

Input (by extension, or --format): `.txt` with one text per line (or, with --documents paragraphs,
blank-line-separated blocks) where each mask marker (default □) stands for one lost character;
`.jsonl` with "inputs" in sentinel format, optionally "lengths" (one integer per sentinel) and
"targets"; `.csv` / `.tsv` with the text in --text-column; ALTO XML or hOCR from an OCR engine,
where glyphs read with less than --ocr-confidence are lost. `-` reads standard input as text lines.
Output: JSON Lines, one object per input text, written as it goes (see README, "Using the trained
model"), or for OCR input the same ALTO / hOCR back with the restored text in place; --html adds a
review page. With targets, the restoration metrics are the last line of standard output.
A thin layer over domainfocus/restoration.py; everything runs locally, nothing is downloaded.
"""

import argparse
import csv
import dataclasses
import io
import json
import os
import signal
import sys
import tempfile

from domainfocus import ocr
from domainfocus.archive import (
    ArchiveError,
    DirectWriter,
    PartWriter,
    drop_cut_line,
    gathered,
    merge,
    part_paths,
    read_records,
    remove_parts,
    written_before,
)
from domainfocus.calibration import (
    calibration_error,
    draw_reliability,
    fit,
    fit_problem,
    graded_spans,
    recalibrated,
    shown_pairs,
)
from domainfocus.damage import Document, from_markers, from_sentinels, target_lengths
from domainfocus.distributed import barrier, join_process_group, leave_process_group, total
from domainfocus.restoration import Restorer
from domainfocus.spans import SENTINEL, restoration_metrics

FORMATS = ("txt", "jsonl", "csv", "tsv", "alto", "hocr")


class RestoreError(ValueError):
    """A problem the user can fix: bad path, bad file, bad option."""


@dataclasses.dataclass
class Example:
    document: Document
    targets: str = None  # the true spans (sentinel format), when the input has them
    kept: dict = dataclasses.field(default_factory=dict)  # input fields copied to the output (--keep-fields)


def input_format(path, given):
    if given:
        return given
    if path == "-":
        return "txt"
    extension = os.path.splitext(path)[1].lower().lstrip(".")
    if extension in ("xml", "alto", "hocr", "html", "htm") and os.path.isfile(path):
        kind = ocr.is_ocr_file(path)
        if kind:
            return kind
        raise RestoreError(f"--input {path}: neither ALTO XML nor hOCR; give an OCR engine's ALTO or hOCR output, "
                           "or name the format with --format.")
    if extension not in FORMATS:
        raise RestoreError(f"--input {path}: unknown file type '.{extension}'; use .txt, .jsonl, .csv, .tsv, "
                           "ALTO .xml or .hocr, or name the format with --format.")
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
    """([Example], the OcrPage for ALTO / hOCR input or None), in input order."""
    if path != "-" and not os.path.isfile(path):
        raise RestoreError(f"--input {path}: no such file.")
    kind = input_format(path, options.format)
    marked = lambda text: from_markers(text, options.marker, options.any_length)  # noqa: E731
    examples, page = [], None
    if kind in ("alto", "hocr"):
        try:
            page = ocr.read_ocr(path, options.ocr_confidence)
        except ocr.OcrError as error:
            raise RestoreError(f"--input {error}") from None
        examples = [Example(document, None, {"id": name}) for document, name in zip(page.documents, page.ids)]
    elif kind == "jsonl":
        for line_number, line in lines_of(path):
            if line.strip():
                examples.append(jsonl_example(path, line_number, line, options.any_length, options.keep_fields))
    elif kind in ("csv", "tsv"):
        # One string, so that a quoted field may span lines as CSV allows.
        rows = csv.DictReader(io.StringIO("\n".join(line for _, line in lines_of(path))),
                              delimiter="," if kind == "csv" else "\t")
        if options.text_column not in (rows.fieldnames or []):
            raise RestoreError(f"--input {path}: no column \"{options.text_column}\" (found {rows.fieldnames}); "
                               "name the text column with --text-column.")
        examples = [Example(marked(row[options.text_column] or ""), None, kept(row, options.keep_fields))
                    for row in rows]
    elif options.documents == "paragraphs":
        paragraph = []
        for _, line in list(lines_of(path)) + [(0, "")]:
            if line.strip():
                paragraph.append(line)
            elif paragraph:
                examples.append(Example(marked("\n".join(paragraph))))
                paragraph = []
    else:
        # Blank lines too, each an empty result: output line N answers input line N.
        examples = [Example(marked(line)) for _, line in lines_of(path)]
    if not any(example.document.text.strip() for example in examples):
        raise RestoreError(f"--input {path}: no text to restore.")
    return examples, page


def jsonl_example(path, line_number, line, any_length, keep=()):
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
    return Example(from_sentinels(record["inputs"], None if any_length else lengths), targets, kept(record, keep))


def kept(fields, names):
    """The input's fields copied to its output line (--keep-fields), in the order asked for."""
    return {name: fields[name] for name in names if name in fields}


def output_kind(path, page):
    """"jsonl", or the OCR format of `page` when the output is to be the same document back."""
    extension = os.path.splitext(path)[1].lower().lstrip(".")
    if path == "-" or extension == "jsonl":
        return "jsonl"
    if page is not None and extension in ("xml", "alto", "hocr", "html", "htm"):
        check_folder(path, "--output")
        return page.kind
    raise RestoreError(f"--output {path}: write .jsonl (or -)" + (f", or {page.kind.upper()} back as .xml / .hocr"
                                                                  if page is not None else "") + ".")


def check_folder(path, option):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise RestoreError(f"{option} {path}: the folder {folder} does not exist.")


def output_handle(path, append=False):
    if path == "-":
        return sys.stdout
    check_folder(path, "--output")
    return open(path, "a" if append else "w", encoding="utf-8")


def parse_options(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="folder written by train.py (best/ or latest/)")
    parser.add_argument("--input", required=True, help=".txt, .jsonl, .csv, .tsv, or - for standard input")
    parser.add_argument("--output", required=True, help=".jsonl to write, or - for standard output")
    parser.add_argument("--format", choices=FORMATS, help="input format when the extension does not say it")
    parser.add_argument("--html", help="also write a review page (one self-contained .html file) of the results")
    parser.add_argument("--ocr-confidence", type=float, default=ocr.DEFAULT_THRESHOLD,
                        help=f"ALTO / hOCR input: a glyph or word the engine read with less confidence than this "
                        f"(0 to 1) is lost (default {ocr.DEFAULT_THRESHOLD}, measured: see README)")
    parser.add_argument("--keep-fields", default="", help="fields (.jsonl) or columns (.csv / .tsv) copied into "
                        "each output line besides id, which always is, comma-separated")
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
    parser.add_argument("--calibrate", action="store_true", help="with --input holding targets (validation that "
                        "shares no text with training): fit the confidence temperature, save it with the model")
    parser.add_argument("--batch-size", type=int, default=16, help="windows decoded together")
    parser.add_argument("--max-input-length", type=int, help="tokens per window (default: the model's MAX_INPUT_LENGTH)")
    parser.add_argument("--max-new-tokens", type=int, help="tokens generated per window (default: MAX_TARGET_LENGTH)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run: the texts already in "
                        "--output (and in the parts an interrupted torchrun left beside it) are not restored again")
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
    if not 0 <= options.ocr_confidence <= 1:
        raise RestoreError(f"--ocr-confidence is a confidence between 0 and 1, e.g. {ocr.DEFAULT_THRESHOLD}.")
    if options.html:
        check_folder(options.html, "--html")
        if os.path.abspath(options.html) == os.path.abspath(options.output):
            raise RestoreError("--html and --output name the same file; give the review page a name of its own.")
    if options.resume and options.output == "-":
        raise RestoreError("--resume needs --output to be a file: standard output keeps no record of what was written.")
    options.keep_fields = list(dict.fromkeys(["id"] + [name.strip() for name in options.keep_fields.split(",")
                                                       if name.strip()]))
    return options


BONUSES = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)  # log-probability: a term may win against a text up to e^8 times likelier


def scored(examples, option):
    found = [example for example in examples if example.targets is not None]
    if not found:
        raise RestoreError(f"{option} needs --input with targets (.jsonl with inputs and targets).")
    return [example.document for example in found], [example.targets for example in found]


def tune_lexicon_bonus(restorer, examples, model_folder):
    """Restore `examples` (which must hold targets) with each of BONUSES, print span_accuracy for each,
    and keep the best (the smallest among equals) in the model folder's generation_config.json."""
    documents, targets = scored(examples, "--tune-lexicon-bonus")
    accuracy = {}
    for bonus in BONUSES:
        restorer.decoding.lexicon_bonus = bonus
        results = restorer.restore_documents(documents)
        accuracy[bonus] = restoration_metrics([result["prediction"] for result in results], targets)["span_accuracy"]
        print(f"lexicon bonus {bonus:g}: span_accuracy {accuracy[bonus]:.4f}", file=sys.stderr)
    best = max(BONUSES, key=lambda bonus: (accuracy[bonus], -bonus))
    restorer.decoding.lexicon_bonus = best
    save_decoding(restorer, model_folder)
    print(f"Saved lexicon bonus {best:g} (span_accuracy {accuracy[best]:.4f} on {len(targets)} examples, "
          f"{accuracy[0.0]:.4f} without) in {model_folder}/generation_config.json.", file=sys.stderr)


def calibrate(restorer, examples, model_folder):
    """Fit how confidence is shown on `examples` (which must hold targets), save it with the model and
    draw MODEL/reliability.png. The error after fitting is measured on the spans it was fitted on, the
    best case: restore other held-out data for an unbiased figure (its metrics line has calibration_error)."""
    documents, targets = scored(examples, "--calibrate")
    _, pairs = graded_spans(restorer, documents, targets)
    problem = fit_problem(pairs)
    temperature, shift = fit(pairs)
    if problem is None and (temperature, shift) == (1.0, 0.0):
        problem = "the model's probability does not rise with being right on these spans"
    if problem:  # never replace a calibration fitted in training by "none"
        raise RestoreError(f"--calibrate: {problem}; nothing was saved. Use validation with more examples.")
    restorer.decoding.confidence_temperature, restorer.decoding.confidence_shift = temperature, shift
    try:
        save_decoding(restorer, model_folder)
        picture = draw_reliability(os.path.join(model_folder, "reliability.png"), pairs, temperature, shift,
                                   f"{os.path.basename(os.path.abspath(model_folder))}: {len(targets)} examples")
    except OSError as error:
        raise RestoreError(f"--calibrate: could not write in {model_folder} ({error.strerror}).") from None
    print(f"Saved confidence calibration (temperature {temperature:g}, shift {shift:g}) in "
          f"{model_folder}/generation_config.json: calibration error {calibration_error(pairs):.4f} -> "
          f"{calibration_error(recalibrated(pairs, temperature, shift)):.4f} on these {len(pairs)} spans (fitted on "
          f"them); reliability diagram: {picture}", file=sys.stderr)


def save_decoding(restorer, model_folder):
    restorer.decoding.save_to(restorer.model)
    folder = tempfile.mkdtemp(dir=model_folder)  # written whole, then swapped in: never half a file
    restorer.model.generation_config.save_pretrained(folder)
    os.replace(os.path.join(folder, "generation_config.json"), os.path.join(model_folder, "generation_config.json"))
    os.rmdir(folder)


def main(argv=None):
    options = parse_options(argv)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    examples, page = read_documents(options.input, options)
    kind = output_kind(options.output, page)
    check_split(options, kind, world)
    lexicon = []
    if options.lexicon:
        from domainfocus.masking import PrepareError, read_lexicon

        try:
            lexicon = read_lexicon(options.lexicon)
        except PrepareError as error:
            raise RestoreError(f"--lexicon {error}") from None
    for asked, option in ((options.tune_lexicon_bonus, "--tune-lexicon-bonus"), (options.calibrate, "--calibrate")):
        if asked:
            scored(examples, option)  # before the model is loaded: a mistake is told at once
    done = written_before(options.output, examples) if options.resume else {}
    if rank == 0 and not options.resume and kind == "jsonl" and options.output != "-":
        if part_paths(options.output):  # left by an earlier interrupted run that is not continued
            print(f"Removing the parts an earlier interrupted run left beside {options.output} (to continue "
                  "that run instead, stop now and add --resume).", file=sys.stderr)
        remove_parts(options.output)
        if world > 1:
            open(options.output, "w").close()
    if world > 1:
        join_process_group()
        barrier()
    from tqdm.auto import tqdm

    device = options.device
    if device == "auto" and world > 1:
        import torch

        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    restorer = Restorer.load(options.model, device, lexicon, num_beams=options.num_beams,
                             batch_size=options.batch_size, max_input_length=options.max_input_length,
                             max_new_tokens=options.max_new_tokens, lexicon_bonus=options.lexicon_bonus)
    if options.tune_lexicon_bonus:
        tune_lexicon_bonus(restorer, examples, options.model)
    if options.calibrate:
        calibrate(restorer, examples, options.model)
    remaining = [index for index in range(len(examples)) if index not in done]
    # Batches of the input as one uninterrupted process takes them (a batch is written whole), each
    # process a run of them: every text is decoded beside the same others, so the output is the same
    # to the byte however the run was split or resumed.
    batches = [batch for start in range(0, len(examples), options.batch_size)
               if (batch := [index for index in range(start, min(start + options.batch_size, len(examples)))
                             if index not in done])]
    mine = batches[rank * len(batches) // world:(rank + 1) * len(batches) // world]
    # One process writing on after what is written streams into --output itself; otherwise each
    # process writes parts beside it, merged in input order at the end.
    # (Without parts, what was written is the output's own lines, the first texts from 0 on.)
    direct = world == 1 and kind == "jsonl" and remaining == list(range(len(done), len(examples))) and (
        not done or not part_paths(options.output))
    if direct:
        if done:
            drop_cut_line(options.output)  # a line a kill cut short must not run into the next one
        writer = DirectWriter(output_handle(options.output, append=bool(done)))
    else:  # an OCR file is written at the end: one process keeps its records, several write parts
        writer = PartWriter(options.output) if kind == "jsonl" or world > 1 else PartWriter(None)
    records = {}  # index -> record, of this run (for the page, the OCR file and the metrics)
    try:
        with tqdm(total=len(examples), initial=len(done), desc="Restoring", unit="text", file=sys.stderr,
                  disable=rank != 0) as progress:
            for chunk in mine:  # written as it goes
                results = restorer.restore_documents([examples[index].document for index in chunk],
                                                     options.alternatives, options.review_below)
                for index, result in zip(chunk, results):
                    records[index] = record_of(examples[index], result)
                writer.write([(index, json.dumps(records[index], ensure_ascii=False) + "\n") for index in chunk])
                progress.update(len(chunk) * world)
    except KeyboardInterrupt:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
        writer.close(keep=kind == "jsonl")
        return interrupted(options, page, kind, examples, done, records, direct or world == 1 and kind != "jsonl",
                           rank)
    writer.close()
    searches_cut = restorer.searches_cut
    if world > 1:
        searches_cut = total(searches_cut)
        if rank != 0:
            leave_process_group()
            return 0
    # The records of every text are held in memory only where needed: for the page, the OCR file and
    # the metrics; for a plain archive they are counted as they are read back.
    needed = options.html or kind != "jsonl" or any(example.targets is not None for example in examples)
    every = None
    try:
        if kind != "jsonl":  # the OCR file, from this process's records or every process's parts
            every = [records[index] for index in range(len(examples))] if world == 1 else gathered(options.output)
        elif options.output == "-":
            every = [records[index] for index in range(len(examples))]
        else:
            if not direct:
                merge(options.output, examples)
            every = list(read_records(options.output)) if needed else None
        finish(options, page, kind, examples, every or [])
    except KeyboardInterrupt:  # the restoring is done; only a file being swapped in can be cut short
        print(f"Interrupted while writing {options.html or options.output}: that file was left as it was "
              "(every file is written whole or not at all).", file=sys.stderr)
        return 130
    finally:
        if world > 1:
            leave_process_group()
    counts = {"restored": 0, "left marked": 0, "flagged for review": 0}
    for record in every if every is not None else read_records(options.output):
        tally(counts, record)
    print(f"Restored {len(examples)} texts -> {options.output}: {counts['restored']} spans restored, "
          f"{counts['left marked']} left marked, {counts['flagged for review']} flagged for review."
          + (f" Review page: {options.html}" if options.html else ""), file=sys.stderr)
    if searches_cut:
        print(f"{searches_cut} spans reached the lexicon search's limit: their restoration is the best "
              "candidate found, not proven the best of the lexicon.", file=sys.stderr)
    if every is not None:
        print_metrics(options, examples, every)
    return 0


def check_split(options, kind, world):
    """One-line refusals of what a split run or --resume cannot do."""
    if world > 1 and options.output == "-":
        raise RestoreError("under torchrun --output must be a file: each process writes its part beside it.")
    if world > 1 and (options.tune_lexicon_bonus or options.calibrate):
        raise RestoreError("--tune-lexicon-bonus and --calibrate save one choice with the model: run them in one "
                           "process, not under torchrun.")
    if options.resume and kind != "jsonl":
        raise RestoreError(f"--resume continues a .jsonl output; {kind.upper()} is written whole at the end: "
                           "run it again without --resume.")


def record_of(example, result):
    """The output line's object: kept fields, the result, and with targets the prediction and targets."""
    prediction = result.pop("prediction")
    if example.targets is not None:
        result.update(prediction=prediction, targets=example.targets)
    return {**example.kept, **result}


def interrupted(options, page, kind, examples, done, records, direct, rank):
    """After Ctrl+C or SIGTERM: say how far the run got (complete lines only were written) and how to go on."""
    if rank != 0:
        return 130
    if direct:  # one process writing in order: what it restored is a prefix of the input
        count = len(done) + len(records)
        told = [f"{count} of {len(examples)} texts " + (f"written to {options.output} (complete lines)"
                                                        if kind == "jsonl" else "restored")]
        ordered = [records[index] for index in sorted(records)]
        told += finish(options, page, kind, examples, ordered if options.html else [])
    else:
        count = len(written_before(options.output, examples)) if kind == "jsonl" else len(records)
        told = [f"{count} of {len(examples)} texts written to {options.output} and the parts beside it "
                "(complete lines)" if kind == "jsonl" else f"{len(records)} of {len(examples)} texts restored"]
    again = "; run again with --resume to continue" if kind == "jsonl" and options.output != "-" else ""
    print(f"Interrupted: {'; '.join(told)}; the rest were not restored{again}.", file=sys.stderr)
    return 130


def print_metrics(options, examples, records):
    """With targets, the restoration metrics over every text of the input (this run's and earlier ones')."""
    found = [(example, record) for example, record in zip(examples, records) if example.targets is not None]
    if not found:
        return
    documents = [example.document for example, _ in found]
    results = [record for _, record in found]
    targets = [example.targets for example, _ in found]
    metrics = restoration_metrics([result["prediction"] for result in results], targets)
    metrics["calibration_error"] = calibration_error(shown_pairs(documents, results, targets))
    if options.calibrate:  # the calibration was fitted on these very spans: say so where the figure is
        metrics["calibration_fitted_on_these"] = True
    print(json.dumps({"examples": len(targets), **{k: v if isinstance(v, bool) else round(v, 4)
                                                   for k, v in metrics.items()}}))


def finish(options, page, kind, examples, records):
    """Write what is written at the end: the OCR file (blocks not restored, after an interrupt, as the
    engine read them) and the review page of `records`. Returns what was written, in words."""
    from domainfocus.review import ReviewError, write_review_page

    written = []
    try:
        if page is not None and kind != "jsonl":
            unrestored = [{"inputs": example.document.text, "restored": example.document.text, "spans": [
                {"text": "", "confidence": None, "review": False, "alternatives": []} for _ in example.document.spans]}
                for example in examples[len(records):]]
            page.write(records + unrestored, options.output)
            written.append(f"{options.output} written" + (f" ({len(unrestored)} blocks as the engine read them)"
                                                          if unrestored else ""))
        if options.html and records:
            write_review_page(options.html, records, title=f"DomainFocus review: {os.path.basename(options.input)}")
            written.append(f"the review page {options.html} shows {len(records)} texts")
    except OSError as error:
        raise RestoreError(f"could not write {error.filename or options.output}: {error.strerror}.") from None
    except ReviewError as error:
        raise RestoreError(f"--html: {error}") from None
    return written


def tally(counts, result):
    for span in result["spans"]:
        counts["restored" if span["confidence"] is not None else "left marked"] += 1
        counts["flagged for review"] += span["review"]
    counts["flagged for review"] += result.get("review", False)  # a text-to-text rewrite cut short


def stop(number, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    # Python leaves SIGINT ignored when it starts ignored (a background job of a shell script, for
    # one): Ctrl+C or `kill -INT` must still stop restoring with complete lines, as promised. SIGTERM
    # (a scheduler's, or torchrun's to its workers) stops it the same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)
    try:
        sys.exit(main())
    except (RestoreError, ArchiveError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # before the first text was written
        print("Interrupted before any text was restored; nothing was written.", file=sys.stderr)
        sys.exit(130)
