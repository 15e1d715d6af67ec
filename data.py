"""Training data: check JSON Lines files line by line, then load, tokenize and cache them.

Every problem a user can cause raises DataError with one line that names the file, the line
and the fix; train.py turns it into exit code 2 before any model is loaded.
"""

import hashlib
import json
import logging
import os

from spans import SENTINEL

logger = logging.getLogger("domainfocus")

# Bumped whenever tokenize_batch changes, so that cached tokenizations are not reused.
TOKENIZATION_VERSION = "2"


class DataError(ValueError):
    """A problem in the user's data files."""


def check_sentinels(inputs, targets):
    """None when the span-corruption sentinels agree, else what is wrong with them.

    Plain text-to-text pairs carry no sentinels at all and are fine. Otherwise the inputs
    must number their sentinels 0, 1, 2, ... in order, and the targets must list the same
    sentinels in the same order (optionally followed by one closing sentinel).
    """
    input_ids = [int(number) for number in SENTINEL.findall(inputs)]
    target_ids = [int(number) for number in SENTINEL.findall(targets)]
    if not input_ids and not target_ids:
        return None
    if input_ids != list(range(len(input_ids))):
        return f"sentinels in the inputs are not numbered 0, 1, 2, ... in order (found {input_ids[:6]})"
    if target_ids[: len(input_ids)] != input_ids or len(target_ids) > len(input_ids) + 1:
        return f"the targets' sentinels {target_ids[:6]} do not match the inputs' sentinels {input_ids[:6]}"
    if len(target_ids) == len(input_ids) + 1 and target_ids[-1] != len(input_ids):
        return f"the targets' closing sentinel should be <extra_id_{len(input_ids)}>"
    return None


def check_jsonl(path, input_column, target_column, constant):
    """Read `path` once and raise DataError at the first bad line; return the number of examples."""
    where = f"{path} (set by {constant})"
    if not os.path.exists(path):
        raise DataError(f"{where} does not exist: check the path, or create it with prepare.py.")
    if os.path.isdir(path):
        raise DataError(f"{where} is a folder: point {constant} at a .jsonl file inside it.")
    count = 0
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise DataError(f"{path}:{line_number}: not UTF-8 text; re-save the file as UTF-8.") from None
            if not line:
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number}: invalid JSON ({error.msg} at column {error.colno}); "
                                "each line must be one JSON object.") from None
            if not isinstance(example, dict):
                raise DataError(f"{path}:{line_number}: expected a JSON object with \"{input_column}\" and "
                                f"\"{target_column}\", found {type(example).__name__}.")
            for column in (input_column, target_column):
                if column not in example:
                    raise DataError(f"{path}:{line_number}: no \"{column}\" field (found {sorted(example)[:5]}); "
                                    "rename the field or set INPUT_COLUMN / TARGET_COLUMN.")
                if not isinstance(example[column], str):
                    raise DataError(f"{path}:{line_number}: \"{column}\" must be a string, "
                                    f"found {type(example[column]).__name__}.")
                if not example[column].strip():
                    raise DataError(f"{path}:{line_number}: \"{column}\" is empty; remove the line or fill it in.")
            problem = check_sentinels(example[input_column], example[target_column])
            if problem:
                raise DataError(f"{path}:{line_number}: {problem}; regenerate the line with prepare.py.")
            count += 1
    if count == 0:
        raise DataError(f"{where} holds no examples: it needs one JSON object per line.")
    return count


def check_jsonl_once(path, input_column, target_column, constant):
    """check_jsonl, skipped when this very file (path, size, modification time) passed before.

    Parsing every line costs about 0.15 s per MB (40 s for 256 MB) on every start and resume;
    a stamp in the datasets cache folder remembers a file that passed. A changed file is checked
    again, and a file that failed never gets a stamp.
    """
    if not os.path.isfile(path):
        return check_jsonl(path, input_column, target_column, constant)  # says what is wrong
    status = os.stat(path)
    key = json.dumps([os.path.abspath(path), status.st_size, status.st_mtime_ns, input_column, target_column,
                      TOKENIZATION_VERSION])
    # The datasets cache folder, found as datasets finds it; importing datasets would cost a second.
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    folder = os.environ.get("HF_DATASETS_CACHE") or os.path.join(home, "datasets")
    stamp = os.path.join(folder, "domainfocus-checked", hashlib.sha256(key.encode("utf-8")).hexdigest()[:32])
    if os.path.isfile(stamp):
        return
    check_jsonl(path, input_column, target_column, constant)
    try:
        os.makedirs(os.path.dirname(stamp), exist_ok=True)
        with open(stamp, "w", encoding="utf-8") as handle:
            handle.write(key)
    except OSError:
        pass  # without a stamp the next start checks the file again, nothing worse


def first_examples(path, input_column, target_column, limit):
    """The first `limit` (inputs, targets) pairs of a file that check_jsonl has accepted."""
    examples = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if len(examples) >= limit:
                break
            if line.strip():
                example = json.loads(line)
                examples.append((example[input_column], example[target_column]))
    return examples


def file_fingerprint(path):
    """A short hash of a file's bytes: tells a resume whether the training data changed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def truncate(ids, limit):
    """Cut a token list to `limit` tokens, keeping the end-of-sequence token last."""
    return ids if len(ids) <= limit else ids[: limit - 1] + ids[-1:]


def tokenize_batch(batch, tokenizer, input_column, target_column, max_input_length, max_target_length):
    # Tokenized without truncation first so that every truncation is counted, never silent.
    inputs = tokenizer(batch[input_column])["input_ids"]
    targets = tokenizer(text_target=batch[target_column])["input_ids"]
    input_ids = [truncate(ids, max_input_length) for ids in inputs]
    labels = [truncate(ids, max_target_length) for ids in targets]
    return {
        "input_ids": input_ids,
        "attention_mask": [[1] * len(ids) for ids in input_ids],
        "labels": labels,
        "length": [len(ids) for ids in input_ids],
        "target_length": [len(ids) for ids in labels],
        "input_truncated": [len(ids) > max_input_length for ids in inputs],
        "target_truncated": [len(ids) > max_target_length for ids in targets],
    }


def tokenizer_fingerprint(tokenizer):
    """Hash of what decides the tokens; padding and truncation settings (changed by any padded
    call and saved with the tokenizer) do not count."""
    description = json.loads(tokenizer.backend_tokenizer.to_str())
    description.pop("padding", None)
    description.pop("truncation", None)
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def load_tokenized(files, tokenizer, input_column, target_column, max_input_length, max_target_length):
    """Load {split: path} JSON Lines files and tokenize them, reusing the cache of an earlier start.

    Returns ({split: Dataset}, {split: {examples, inputs_truncated, targets_truncated, input_tokens,
    target_tokens, longest_input, longest_target}}) -- the counts after truncation.
    The cache lives beside the datasets cache of the raw file and is keyed by the file's own
    fingerprint, the tokenizer and the limits, so any change to one of them tokenizes again.
    """
    import datasets  # imported here so that the checks above answer in a second

    raw = datasets.load_dataset("json", data_files=files)
    tokenized, counts = {}, {}
    tokenizer_key = tokenizer_fingerprint(tokenizer)  # once: it serializes the whole vocabulary
    for split, dataset in raw.items():
        key = "|".join([TOKENIZATION_VERSION, dataset._fingerprint, tokenizer_key,
                        input_column, target_column, str(max_input_length), str(max_target_length)])
        mapped = dataset.map(
            tokenize_batch,
            batched=True,
            fn_kwargs=dict(tokenizer=tokenizer, input_column=input_column, target_column=target_column,
                           max_input_length=max_input_length, max_target_length=max_target_length),
            remove_columns=dataset.column_names,
            new_fingerprint=hashlib.sha256(key.encode("utf-8")).hexdigest()[:32],
            desc=f"Tokenizing {split}",
        )
        # Whole columns as numpy arrays: reading them row by row takes minutes on a large corpus.
        columns = mapped.select_columns(["length", "target_length", "input_truncated", "target_truncated"])
        columns = columns.with_format("numpy")[:]
        lengths, target_lengths = columns["length"], columns["target_length"]
        counts[split] = {"examples": len(mapped), "inputs_truncated": int(columns["input_truncated"].sum()),
                         "targets_truncated": int(columns["target_truncated"].sum()),
                         "input_tokens": int(lengths.sum()), "target_tokens": int(target_lengths.sum()),
                         "longest_input": int(lengths.max(initial=0)), "longest_target": int(target_lengths.max(initial=0))}
        tokenized[split] = mapped.remove_columns(["input_truncated", "target_truncated", "target_length"])
    return tokenized, counts


def report_truncation(counts, files, max_input_length, max_target_length):
    """Log how many examples were cut; refuse a split where every input was cut."""
    for split, count in counts.items():
        examples, inputs_cut, targets_cut = count["examples"], count["inputs_truncated"], count["targets_truncated"]
        if inputs_cut == examples:
            raise DataError(f"{files[split]}: every input is longer than MAX_INPUT_LENGTH={max_input_length} tokens; "
                            "raise MAX_INPUT_LENGTH or split the texts into shorter examples.")
        if inputs_cut or targets_cut:
            logger.warning("%s: truncated %d of %d inputs to MAX_INPUT_LENGTH=%d and %d targets to "
                           "MAX_TARGET_LENGTH=%d tokens; raise the limits to keep them whole.",
                           split, inputs_cut, examples, max_input_length, targets_cut, max_target_length)
        else:
            logger.info("%s: %d examples, none truncated.", split, examples)
