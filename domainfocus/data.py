"""Training data: check JSON Lines files line by line, then load, tokenize and cache them; or, for
raw text, draw masks while training (MaskedExamples, MaskingCollator) with masking.py's Masker and
a validation set masked once. Files are fingerprinted so that a resume knows when data changed.

Every problem a user can cause raises DataError with one line that names the file, the line
and the fix; train.py turns it into exit code 2 before any model is loaded.
"""

import hashlib
import heapq
import json
import logging
import os
from array import array
from itertools import chain

from domainfocus.distributed import is_main_process
from domainfocus.masking import (Lexicon, Masker, PrepareError, overlap, read_documents, read_lexicon, report_overlap,
                                 split_documents, text_digests)
from domainfocus.spans import SENTINEL, example_text

logger = logging.getLogger("domainfocus")

# Bumped whenever tokenize_batch changes, so that cached tokenizations are not reused.
TOKENIZATION_VERSION = "3"


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
    digests = [text_digests(example_text(source, target)) for source, target in zip(batch[input_column],
                                                                                       batch[target_column])]
    return {
        "input_ids": input_ids,
        "attention_mask": [[1] * len(ids) for ids in input_ids],
        "labels": labels,
        "length": [len(ids) for ids in input_ids],
        "target_length": [len(ids) for ids in labels],
        "input_truncated": [len(ids) > max_input_length for ids in inputs],
        "target_truncated": [len(ids) > max_target_length for ids in targets],
        # What the example says when whole, hashed: validation that training has seen is found by them.
        "text_digest": [text for text, _ in digests],
        "near_digest": [near for _, near in digests],
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
    target_tokens, longest_input, longest_target}} -- the counts after truncation, {split: [the
    masking.text_digests of each example]}).
    The cache lives beside the datasets cache of the raw file and is keyed by the file's own
    fingerprint, the tokenizer and the limits, so any change to one of them tokenizes again.
    """
    import datasets  # imported here so that the checks above answer in a second

    raw = datasets.load_dataset("json", data_files=files)
    tokenized, counts, digests = {}, {}, {}
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
        columns = mapped.select_columns(["length", "target_length", "input_truncated", "target_truncated",
                                        "text_digest", "near_digest"])
        columns = columns.with_format("numpy")[:]
        lengths, target_lengths = columns["length"], columns["target_length"]
        counts[split] = {"examples": len(mapped), "inputs_truncated": int(columns["input_truncated"].sum()),
                         "targets_truncated": int(columns["target_truncated"].sum()),
                         "input_tokens": int(lengths.sum()), "target_tokens": int(target_lengths.sum()),
                         "longest_input": int(lengths.max(initial=0)), "longest_target": int(target_lengths.max(initial=0))}
        digests[split] = list(zip(columns["text_digest"].tolist(), columns["near_digest"].tolist()))
        tokenized[split] = mapped.remove_columns(["input_truncated", "target_truncated", "target_length", "text_digest",
                                                  "near_digest"])
    return tokenized, counts, digests


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


# --- raw text: masks drawn while training ------------------------------------------------------

def is_raw_text(path, input_column):
    """True for raw domain text: a .txt file, or JSON Lines whose first record has no `input_column`."""
    if path.endswith(".txt"):
        return True
    if not path.endswith(".jsonl") or not os.path.isfile(path):
        return False  # anything else is read as prepared JSON Lines, and check_jsonl says what is wrong
    with open(path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    record = json.loads(raw)
                except ValueError:
                    return False
                return isinstance(record, dict) and input_column not in record
    return False


def texts_of(path, input_column, target_column):
    """The text of a training file without sentinels: raw documents, or prepared inputs and targets
    (what the tiny model's tokenizer and TRIM_VOCAB learn from)."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            if path.endswith(".txt"):
                yield line
                continue
            record = json.loads(line)
            columns = (input_column, target_column) if input_column in record else record
            yield from (SENTINEL.sub(" ", record[column]) for column in columns if isinstance(record[column], str))


def masking_mode(config):
    """"prepared" (JSON Lines masked by prepare.py), "fresh" (raw text, new masks every epoch) or
    "static" (raw text, the same masks every epoch)."""
    if not is_raw_text(config["TRAIN_FILE"], config["INPUT_COLUMN"]):
        return "prepared"
    return "fresh" if config["FRESH_MASKS"] else "static"


def check_raw_text(config):
    """The checks of a raw-text run that need no model, within a second: files, lexicons, and how
    TRAIN_FILE, VALID_FILE and LEXICON_FILE fit together."""
    train_file, valid_file, lexicon = config["TRAIN_FILE"], config["VALID_FILE"], config["LEXICON_FILE"]
    for constant in ("TRAIN_FILE", "VALID_FILE"):
        path = config[constant]
        if path and not os.path.isfile(path):
            raise DataError(f"{path} (set by {constant}) does not exist: check the path"
                            + (", or set VALID_FILE='' to hold out VALID_RATIO of the documents." if path == valid_file
                               else "."))
    if not lexicon:
        raise DataError(f"TRAIN_FILE={train_file} is raw text: set LEXICON_FILE to your term list (one term per line) "
                        "so that masks can be drawn, or prepare the data with prepare.py.")
    for constant in ("LEXICON_FILE", "HARD_LEXICON_FILE"):
        if config[constant]:
            try:
                read_lexicon(config[constant])
            except PrepareError as error:
                raise DataError(f"{error} (set by {constant})") from None


def check_data(config):
    """Step 1 of train.py for either kind of data: raise DataError at the first problem."""
    if masking_mode(config) == "prepared":
        if config["LEXICON_FILE"]:
            raise DataError(f"LEXICON_FILE={config['LEXICON_FILE']} is set, but TRAIN_FILE={config['TRAIN_FILE']} "
                            "holds prepared examples: point TRAIN_FILE at the raw text (.txt), or set LEXICON_FILE=''.")
        if not config["VALID_FILE"]:
            raise DataError("VALID_FILE='' holds out documents of raw text only: give a prepared valid.jsonl.")
        for constant in ("TRAIN_FILE", "VALID_FILE"):
            check_jsonl_once(config[constant], config["INPUT_COLUMN"], config["TARGET_COLUMN"], constant)
        return
    check_raw_text(config)
    valid_file = config["VALID_FILE"]
    if valid_file and not is_raw_text(valid_file, config["INPUT_COLUMN"]):
        check_jsonl_once(valid_file, config["INPUT_COLUMN"], config["TARGET_COLUMN"], "VALID_FILE")


def build_masker(config):
    """The Masker prepare.py uses, with the masking constants of train.py."""
    hard = read_lexicon(config["HARD_LEXICON_FILE"]) if config["HARD_LEXICON_FILE"] else []
    return Masker(Lexicon(read_lexicon(config["LEXICON_FILE"]), hard), config["TERM_MASK_PROB"],
                  config["HARD_TERM_MASK_PROB"], config["MASK_RATE"], config["MAX_SPAN"], config["NOISE"], config["SEED"])


def read_pieces(path, config, valid_ratio):
    """{"train": [examples], "valid": [examples], "duplicates": repeated documents left out} cut from a
    raw text file as prepare.py cuts them, its split too: whole documents (or GROUP_FIELD groups) held
    out for validation with probability `valid_ratio`, decided by their content."""
    pieces = {"train": [], "valid": [], "duplicates": 0}
    try:
        documents = read_documents([path], config["DOCUMENTS"], config["TEXT_FIELD"], config["GROUP_FIELD"])
        for split, _, examples in split_documents(documents, valid_ratio, config["SEED"], config["MAX_CHARS"], pieces):
            pieces[split].extend(examples)
    except PrepareError as error:
        raise DataError(str(error)) from None
    return pieces


def mask_once(pieces, masker, key):
    """Each piece masked with the seed "key:index": the same examples on every start."""
    examples = []
    for index, piece in enumerate(pieces):
        masker.reseed(f"{key}:{index}")
        examples.append(masker.example(piece)[0])
    return examples


class MaskedExamples:
    """Raw-text training examples, masked as they are read.

    Example i of epoch e is masked from the seed "SEED:e:i" (always epoch 0 with FRESH_MASKS=False),
    so its masks depend on nothing else: not on the order, not on which worker process reads it,
    not on an interrupt. A resumed run sees exactly the masks an uninterrupted one would have.
    The sampler (trainer.ShuffledLengthGroupedSampler) hands over the epoch inside the index,
    e * len(self) + i, because worker processes hold copies of this object that a set_epoch call
    would not reach. Items are (inputs, targets) tuples; MaskingCollator tokenizes them per batch.
    """

    def __init__(self, pieces, masker, seed, fresh):
        self.pieces, self.masker, self.seed, self.fresh = pieces, masker, seed, fresh
        self.lengths = [len(piece) for piece in pieces]  # characters: enough to group by length
        # The lexicon terms of each piece, found at its first draw and kept: between epochs only the
        # draw changes, and with a 20,000-term lexicon finding the terms was a third of a draw.
        # Found lazily, so that a 96 MB corpus starts as fast as before; a DataLoader worker process
        # fills its own copy the same way, with the same terms.
        self.terms_found = [None] * len(pieces)

    def __len__(self):
        return len(self.pieces)

    def terms_in(self, index):
        """masking.Lexicon.find of piece `index`: [(start, end)] of its terms."""
        found = self.terms_found[index]
        if found is None:
            # Kept flat as 4-byte ints, (start, end, start, end, ...): as a list of tuples each term
            # would take 64 bytes, more than the text itself takes.
            terms = self.masker.lexicon.find(self.pieces[index])
            found = self.terms_found[index] = array("I", chain.from_iterable(terms))
        return list(zip(found[::2], found[1::2]))

    def draw(self, epoch, index):
        """masking.Masker.example's result for example `index` in `epoch`: (example, spans, counts, terms)."""
        self.masker.reseed(f"{self.seed}:{epoch if self.fresh else 0}:{index}")
        return self.masker.example(self.pieces[index], self.terms_in(index))

    def masked(self, epoch, index):
        example = self.draw(epoch, index)[0]
        return example["inputs"], example["targets"]

    def __getitem__(self, index):
        epoch, index = divmod(index, len(self.pieces))
        return self.masked(epoch, index)


class MaskingCollator:
    """Tokenizes the (inputs, targets) of MaskedExamples per batch, then pads like the prepared
    data's collator (dynamic padding, labels padded with -100). Tokenized features (the validation
    set) are padded as they are. Truncation is counted, never silent: each batch carries the number
    of its examples cut ("truncated", which the Trainer takes out before the model sees the batch),
    so the count reaches the training process from data-loader workers too."""
    def __init__(self, tokenizer, pad, max_input_length, max_target_length):
        self.tokenizer, self.pad = tokenizer, pad
        self.max_input_length, self.max_target_length = max_input_length, max_target_length
        self.warned = False

    def __call__(self, examples):
        import torch

        if not isinstance(examples[0], tuple):
            return self.pad(examples)
        batch = tokenize_batch({"inputs": [inputs for inputs, _ in examples], "targets": [t for _, t in examples]},
                               self.tokenizer, "inputs", "targets", self.max_input_length, self.max_target_length)
        truncated = sum(map(max, batch["input_truncated"], batch["target_truncated"]))
        if truncated and not self.warned:
            logger.warning("Masked examples longer than MAX_INPUT_LENGTH=%d or MAX_TARGET_LENGTH=%d tokens are being "
                           "truncated; raise the limits or lower MAX_CHARS (--check estimates how many).",
                           self.max_input_length, self.max_target_length)
            self.warned = True
        padded = self.pad([{"input_ids": ids, "attention_mask": mask, "labels": labels} for ids, mask, labels
                           in zip(batch["input_ids"], batch["attention_mask"], batch["labels"])])
        padded["truncated"] = torch.tensor(truncated)
        return padded


def evenly(items, limit):
    """At most `limit` items spread evenly over `items`."""
    step = max(len(items) / limit, 1)
    return [items[int(position * step)] for position in range(min(len(items), limit))]


def masked_counts(dataset, tokenizer, max_input_length, max_target_length, limit):
    """The counts load_tokenized gives, for MaskedExamples: estimated from `limit` examples spread
    evenly over the data (epoch 0) and the 64 longest, and the masking itself: the share of
    maskable characters masked, the share of spans that are lexicon terms, and the lexicon terms
    that occur in those examples."""
    indices = evenly(range(len(dataset)), limit)
    longest = heapq.nlargest(64, range(len(dataset)), key=dataset.lengths.__getitem__)
    masked = maskable = spans = term_spans = 0
    terms_seen = set()
    examples = []
    for index in indices + longest:
        example, chosen, (masked_here, maskable_here), found = dataset.draw(0, index)
        examples.append(example)
        if len(examples) <= len(indices):
            masked, maskable, spans = masked + masked_here, maskable + maskable_here, spans + len(chosen)
            term_spans += sum(is_term for _, _, is_term in chosen)
            terms_seen.update(dataset.pieces[index][start:end] for start, end in found)
    batch = tokenize_batch({"inputs": [e["inputs"] for e in examples], "targets": [e["targets"] for e in examples]},
                           tokenizer, "inputs", "targets", max_input_length, max_target_length)
    sample, scale = len(indices), len(dataset) / max(len(indices), 1)
    return {
        "examples": len(dataset),
        "inputs_truncated": round(sum(batch["input_truncated"][:sample]) * scale),
        "targets_truncated": round(sum(batch["target_truncated"][:sample]) * scale),
        "input_tokens": round(sum(batch["length"][:sample]) * scale),
        "target_tokens": round(sum(batch["target_length"][:sample]) * scale),
        "longest_input": max(batch["length"], default=0), "longest_target": max(batch["target_length"], default=0),
        "sampled_examples": sample, "mask_rate": masked / max(maskable, 1), "term_span_share": term_spans / max(spans, 1),
        "lexicon_terms": len(dataset.masker.lexicon.terms),
        "lexicon_coverage": len(terms_seen) / max(len(dataset.masker.lexicon.terms), 1),
    }


def write_examples(path, examples):
    """Masked examples as JSON Lines, written beside `path` first and then renamed over it; left
    as it is when it already holds them (a resume), so the tokenization cache keyed by it stays valid."""
    text = "".join(json.dumps(example, ensure_ascii=False) + "\n" for example in examples)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


def load_raw(config, tokenizer, folder, sample=2000):
    """Raw text: (training MaskedExamples, the path of the fixed validation set written to `folder`,
    the training counts with the masking figures and the repeated documents left out, the
    masking.text_digests of the training examples).

    The validation set is masked once, with the seed "SEED:valid:i", never redrawn: from VALID_FILE
    (raw text is masked, prepared JSON Lines is used as it is) or, with VALID_FILE='', from the
    documents of TRAIN_FILE held out with probability VALID_RATIO (the rule of prepare.py)."""
    masker = build_masker(config)
    valid_file = config["VALID_FILE"]
    pieces = read_pieces(config["TRAIN_FILE"], config, 0 if valid_file else config["VALID_RATIO"])
    if not pieces["train"]:
        raise DataError(f"{config['TRAIN_FILE']} (set by TRAIN_FILE) holds no text; it needs one document per line.")
    validation = valid_file
    if not valid_file or is_raw_text(valid_file, config["INPUT_COLUMN"]):
        held_out = pieces["valid"] if not valid_file else read_pieces(valid_file, config, 0)["train"]
        if not held_out:
            raise DataError(f"VALID_RATIO={config['VALID_RATIO']} held out none of the documents of "
                            f"{config['TRAIN_FILE']}: raise VALID_RATIO or give a VALID_FILE." if not valid_file else
                            f"{valid_file} (set by VALID_FILE) holds no text; it needs one document per line.")
        validation = os.path.join(folder, "validation.jsonl")
        if is_main_process():  # under torchrun the others wait (main_process_first) and read it
            os.makedirs(folder, exist_ok=True)
            examples = mask_once(held_out, masker, f"{config['SEED']}:valid")
            write_examples(validation, [{config["INPUT_COLUMN"]: example["inputs"],
                                         config["TARGET_COLUMN"]: example["targets"]} for example in examples])
    dataset = MaskedExamples(pieces["train"], masker, config["SEED"], config["FRESH_MASKS"])
    counts = masked_counts(dataset, tokenizer, config["MAX_INPUT_LENGTH"], config["MAX_TARGET_LENGTH"], sample)
    counts["duplicates"] = pieces["duplicates"]
    return dataset, validation, counts, [text_digests(piece) for piece in pieces["train"]]


def load_data(config, tokenizer, folder, sample=2000):
    """({"train": ..., "validation": ...} datasets, counts, the validation file) for prepared JSON
    Lines or for raw text; a raw run's fixed validation set is written to `folder`."""
    limits = (config["MAX_INPUT_LENGTH"], config["MAX_TARGET_LENGTH"])
    columns = (config["INPUT_COLUMN"], config["TARGET_COLUMN"])
    if masking_mode(config) == "prepared":
        files = {"train": config["TRAIN_FILE"], "validation": config["VALID_FILE"]}
        datasets_by_split, counts, digests = load_tokenized(files, tokenizer, *columns, *limits)
        report_truncation(counts, files, *limits)
        report_overlap(counts["validation"], *overlap(digests["train"], digests["validation"]))
        return datasets_by_split, counts, config["VALID_FILE"]
    train, validation, train_counts, train_digests = load_raw(config, tokenizer, folder, sample)
    datasets_by_split, counts, digests = load_tokenized({"validation": validation}, tokenizer, *columns, *limits)
    counts = {"train": train_counts, **counts}
    report_truncation(counts, {"train": config["TRAIN_FILE"], "validation": validation}, *limits)
    report_overlap(counts["validation"], *overlap(train_digests, digests["validation"]))
    return {"train": train, **datasets_by_split}, counts, validation


