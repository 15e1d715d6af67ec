"""Raw domain text + term lexicon -> training data for train.py (lexicon-guided whole-term masking).

    python prepare.py --text notes.txt --lexicon terms.txt --out data
    python prepare.py --text a.txt b.jsonl --lexicon terms.txt --hard-lexicon rare.txt --noise 0.01 --out data

Writes DIR/train.jsonl, DIR/valid.jsonl (T5 span-corruption format) and DIR/stats.json.

* Text: .txt with one document per line (or, with --documents paragraphs, documents separated
  by blank lines), or .jsonl with the text in --text-field. UTF-8.
* Lexicon: one term per line, optionally followed by a tab and a number (a frequency, ignored).
* Terms are found by longest match and masked as one unit: a term with probability
  --term-mask-prob, a hard term (--hard-lexicon) with --hard-term-mask-prob. When terms alone
  mask less than --mask-rate of the maskable characters, random short spans make up the rest.
  Punctuation and whitespace are never masked; at most 100 spans per example.
* Documents are cut into examples at sentence ends (at most --max-chars characters); the
  train/valid split is by document, so no document appears in both.
* --noise drops or replaces that share of the unmasked characters, like OCR damage.
* It streams: memory does not grow with the corpus. The same inputs and --seed give the same files.
"""

import argparse
import json
import os
import random
import re
import sys
import unicodedata

from spans import MAX_SPANS, SENTENCE_END, build_targets, sentinel

# Unicode punctuation (categories P*) of the Basic Multilingual Plane, as one character class:
# regular expressions test it in C, a hundred times faster than unicodedata per character.
PUNCTUATION_CLASS = "".join(re.escape(chr(code)) for code in range(0x10000)
                            if unicodedata.category(chr(code)).startswith("P"))
PUNCTUATION = re.compile(f"[{PUNCTUATION_CLASS}]")
MASKABLE_CHARACTER = re.compile(f"[^\\s{PUNCTUATION_CLASS}]")
UNIT = re.compile(f"[A-Za-z0-9]+|[^\\s{PUNCTUATION_CLASS}]")  # a Latin word or number, or one other character


class PrepareError(ValueError):
    """A problem the user can fix in the files or options."""


def maskable(text):
    """True when `text` may be masked: no punctuation and no leading or trailing whitespace."""
    return bool(text) and text == text.strip() and not PUNCTUATION.search(text)


class Lexicon:
    """Longest-match term finder: a set of terms indexed by first character and length."""

    def __init__(self, terms, hard_terms=()):
        self.hard = set(hard_terms)
        self.terms = set(terms) | self.hard
        self.lengths = {}
        for term in self.terms:
            self.lengths.setdefault(term[0], set()).add(len(term))
        self.lengths = {first: sorted(lengths, reverse=True) for first, lengths in self.lengths.items()}

    def find(self, text):
        """[(start, end)] of non-overlapping terms, leftmost-longest; Latin terms only as whole words."""
        found, position, size = [], 0, len(text)
        lengths_by_first, terms = self.lengths, self.terms
        while position < size:
            lengths = lengths_by_first.get(text[position])
            if lengths:
                for length in lengths:
                    end = position + length
                    if end <= size and text[position:end] in terms and self.whole_word(text, position, end):
                        found.append((position, end))
                        position = end
                        break
                else:
                    position += 1
            else:
                position += 1
        return found

    @staticmethod
    def whole_word(text, start, end):
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        return not ((text[start].isascii() and text[start].isalnum() and before.isascii() and before.isalnum())
                    or (text[end - 1].isascii() and text[end - 1].isalnum() and after.isascii() and after.isalnum()))


def read_lexicon(path):
    """Terms from a file with one term per line, optionally "term<TAB>frequency"."""
    if not os.path.isfile(path):
        raise PrepareError(f"{path}: no such lexicon file.")
    terms = []
    with open(path, encoding="utf-8", errors="strict") as handle:
        try:
            for line in handle:
                term = line.split("\t", 1)[0].strip()
                if len(term) >= 2 and not term.startswith("#"):
                    terms.append(term)
        except UnicodeDecodeError:
            raise PrepareError(f"{path}: not UTF-8 text; re-save the lexicon as UTF-8.") from None
    if not terms:
        raise PrepareError(f"{path}: no terms of two or more characters; one term per line is expected.")
    return terms


def read_documents(paths, documents, text_field):
    """Yield documents one at a time from .txt and .jsonl files."""
    for path in paths:
        if not os.path.isfile(path):
            raise PrepareError(f"--text {path}: no such file.")
        with open(path, "rb") as handle:
            paragraph = []
            for line_number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise PrepareError(f"{path}:{line_number}: not UTF-8 text; re-save the file as UTF-8.") from None
                if path.endswith(".jsonl"):
                    if not line:
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise PrepareError(f"{path}:{line_number}: invalid JSON ({error.msg}).") from None
                    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                        raise PrepareError(f"{path}:{line_number}: needs a string field \"{text_field}\" "
                                           "(set --text-field, or TEXT_FIELD in train.py).")
                    if record[text_field].strip():
                        yield record[text_field].strip()
                elif documents == "lines":
                    if line:
                        yield line
                elif line:
                    paragraph.append(line)
                elif paragraph:
                    yield "\n".join(paragraph)
                    paragraph = []
            if paragraph:
                yield "\n".join(paragraph)


def cut_examples(document, max_chars):
    """Pieces of at most `max_chars` characters, cut after sentence ends where possible."""
    if len(document) <= max_chars:  # most documents of a line-per-sentence corpus: no need to look for ends
        return [document.strip()] if document.strip() else []
    ends = [match.end() for match in SENTENCE_END.finditer(document)] + [len(document)]
    pieces, start, last_end = [], 0, 0
    for end in ends:
        if end - start > max_chars and last_end > start:
            pieces.append(document[start:last_end])
            start = last_end
        while end - start > max_chars:  # one sentence longer than the limit: cut it hard
            pieces.append(document[start:start + max_chars])
            start += max_chars
        last_end = end
    pieces.append(document[start:])
    return [piece.strip() for piece in pieces if piece.strip()]


class Masker:
    """Chooses the spans of one example: lexicon terms first, then random short spans."""

    def __init__(self, lexicon, term_probability, hard_probability, mask_rate, max_span, noise, seed):
        self.lexicon = lexicon
        self.term_probability = term_probability
        self.hard_probability = hard_probability
        self.mask_rate = mask_rate
        self.max_span = max_span
        self.noise = noise
        self.reseed(seed)

    def reseed(self, seed):
        """Start the random draws afresh from `seed` (an int, or a string such as "42:3:1017").
        train.py reseeds before every example, so an example's masks depend on nothing drawn before."""
        self.rng = random.Random(seed)
        # Separate, so that noise never changes the masks.
        self.noise_rng = random.Random(seed + 2 if isinstance(seed, int) else f"{seed}:noise")

    def choose_spans(self, text, terms_found):
        """([(start, end, is_term)] sorted and separated by unmasked characters, characters masked,
        characters that could be masked)."""
        rng = self.rng
        maskable_characters = len(MASKABLE_CHARACTER.findall(text))
        budget = self.mask_rate * maskable_characters
        taken = [False] * (len(text) + 1)
        spans, masked = [], 0

        def free(start, end):  # the span and one character on each side are still unmasked
            return not any(taken[max(start - 1, 0):end + 1])

        def take(start, end, is_term):
            nonlocal masked
            for index in range(start, end):
                taken[index] = True
            spans.append((start, end, is_term))
            masked += len(MASKABLE_CHARACTER.findall(text, start, end))

        # Terms that stay visible are left whole: random spans never cut into them.
        in_term = [False] * (len(text) + 1)
        for start, end in terms_found:
            for index in range(start, end):
                in_term[index] = True
        for start, end in terms_found:
            term = text[start:end]
            probability = self.hard_probability if term in self.lexicon.hard else self.term_probability
            if len(spans) < MAX_SPANS and maskable(term) and free(start, end) and rng.random() < probability:
                take(start, end, True)
        units = [match.span() for match in UNIT.finditer(text)]
        attempts = 4 * len(units)
        while masked < budget and len(spans) < MAX_SPANS and attempts > 0 and units:
            attempts -= 1
            first = rng.randrange(len(units))
            last = min(first + rng.randint(1, self.max_span), len(units)) - 1
            start, end = units[first][0], units[last][1]
            if maskable(text[start:end]) and free(start, end) and not any(in_term[start:end]):
                take(start, end, False)
        return sorted(spans), masked, maskable_characters

    def add_noise(self, text):
        """Drop or replace about `noise` of the characters, as OCR damage does."""
        if not self.noise or not text:
            return text
        pool = [char for char in text if not char.isspace()] or [" "]
        damaged = []
        for char in text:
            roll = self.noise_rng.random()
            if char.isspace() or roll >= self.noise:
                damaged.append(char)
            elif roll >= self.noise / 2:
                damaged.append(self.noise_rng.choice(pool))
        return "".join(damaged)

    def example(self, text):
        """({"inputs", "targets"}, spans chosen, (characters masked, maskable), lexicon terms found)."""
        terms_found = self.lexicon.find(text)
        spans, masked, maskable_characters = self.choose_spans(text, terms_found)
        inputs, position = [], 0
        for index, (start, end, _) in enumerate(spans):
            inputs.append(self.add_noise(text[position:start]) + sentinel(index))
            position = end
        inputs.append(self.add_noise(text[position:]))
        targets = build_targets([text[start:end] for start, end, _ in spans])
        return {"inputs": "".join(inputs), "targets": targets}, spans, (masked, maskable_characters), terms_found


def split_documents(documents, valid_ratio, seed, max_chars):
    """Yield ("train" or "valid", document, its examples): each whole document goes to validation
    with probability `valid_ratio`, drawn from `seed`, so no document is in both."""
    split_rng = random.Random(seed + 1)
    for document in documents:
        split = "valid" if split_rng.random() < valid_ratio else "train"
        yield split, document, cut_examples(document, max_chars)


def prepare(options, report=print):
    """Stream the documents into DIR/train.jsonl and DIR/valid.jsonl; return the statistics."""
    for name in ("term_mask_prob", "hard_term_mask_prob", "mask_rate", "valid_ratio", "noise"):
        if not 0 <= getattr(options, name) <= 1:
            raise PrepareError(f"--{name.replace('_', '-')}={getattr(options, name)}: must lie between 0 and 1.")
    if options.max_chars < 8 or options.max_span < 1:
        raise PrepareError("--max-chars must be at least 8 and --max-span at least 1.")
    for name in ("term_mask_prob", "hard_term_mask_prob"):
        if getattr(options, name) > 0.8:
            report(f"warning: --{name.replace('_', '-')}={getattr(options, name)} masks nearly every term; the "
                   "model then sees them too rarely in context. 0.5-0.7 is the usual range.")
    terms = read_lexicon(options.lexicon)
    hard_terms = read_lexicon(options.hard_lexicon) if options.hard_lexicon else []
    lexicon = Lexicon(terms, hard_terms)
    masker = Masker(lexicon, options.term_mask_prob, options.hard_term_mask_prob, options.mask_rate,
                    options.max_span, options.noise, options.seed)
    os.makedirs(options.out, exist_ok=True)
    paths = {split: os.path.join(options.out, f"{split}.jsonl") for split in ("train", "valid")}
    stats = {"documents": 0, "documents_valid": 0, "examples_train": 0, "examples_valid": 0, "characters": 0,
             "bytes": 0, "masked_spans": 0, "term_spans": 0, "masked_characters": 0, "maskable_characters": 0}
    terms_seen = set()
    sample = []
    files = {split: open(path + ".tmp", "w", encoding="utf-8") for split, path in paths.items()}
    try:
        documents = read_documents(options.text, options.documents, options.text_field)
        for split, document, pieces in split_documents(documents, options.valid_ratio, options.seed, options.max_chars):
            stats["documents"] += 1
            stats["documents_valid"] += split == "valid"
            stats["bytes"] += len(document.encode("utf-8"))
            for piece in pieces:
                example, spans, (masked, maskable_characters), terms_found = masker.example(piece)
                files[split].write(json.dumps(example, ensure_ascii=False) + "\n")
                stats[f"examples_{split}"] += 1
                stats["characters"] += len(piece)
                stats["masked_spans"] += len(spans)
                stats["term_spans"] += sum(is_term for _, _, is_term in spans)
                stats["masked_characters"] += masked
                stats["maskable_characters"] += maskable_characters
                terms_seen.update(piece[start:end] for start, end in terms_found)
                if len(sample) < 2000:
                    sample.append(piece)
    finally:
        for handle in files.values():
            handle.close()
    if stats["examples_train"] == 0:
        raise PrepareError("no text found in --text files; nothing was written.")
    for split, path in paths.items():
        os.replace(path + ".tmp", path)
    stats.update(
        term_span_share=stats["term_spans"] / max(stats["masked_spans"], 1),
        mask_rate=stats["masked_characters"] / max(stats["maskable_characters"], 1),
        lexicon_terms=len(lexicon.terms),
        lexicon_coverage=len(terms_seen) / len(lexicon.terms),
        estimated_tokens=estimate_tokens(options.tokenizer, sample, stats["characters"]),
        tokenizer=options.tokenizer,
        seed=options.seed,
    )
    with open(os.path.join(options.out, "stats.json"), "w", encoding="utf-8") as handle:
        json.dump(stats, handle, indent=2)
    if stats["examples_valid"] == 0:
        report("warning: no document went to valid.jsonl; add documents or raise --valid-ratio before training.")
    report(format_report(stats, paths))
    return stats


def estimate_tokens(tokenizer_path, sample, characters):
    """Tokens in the whole corpus, extrapolated from a sample by tokens per character."""
    if not tokenizer_path or not sample:
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=os.path.isdir(tokenizer_path))
    tokens = sum(len(ids) for ids in tokenizer(sample, add_special_tokens=False)["input_ids"])
    return round(tokens / sum(len(text) for text in sample) * characters)


def format_report(stats, paths):
    tokens = (f"about {stats['estimated_tokens']:,} tokens" if stats["estimated_tokens"] is not None
              else "pass --tokenizer MODEL_FOLDER for a token estimate")
    return "\n".join([
        f"documents        {stats['documents']:,} ({stats['documents_valid']:,} for validation)",
        f"examples         {stats['examples_train']:,} -> {paths['train']}, "
        f"{stats['examples_valid']:,} -> {paths['valid']}",
        f"corpus           {stats['bytes'] / 1e6:,.1f} MB, {stats['characters']:,} characters, {tokens}",
        f"masked spans     {stats['masked_spans']:,}, of them lexicon terms {stats['term_span_share']:.1%}",
        f"mask rate        {stats['mask_rate']:.1%} of the maskable characters",
        f"lexicon coverage {stats['lexicon_coverage']:.1%} of {stats['lexicon_terms']:,} terms occur in the text",
    ])


def parse_options(argv=None):
    parser = argparse.ArgumentParser(description="Raw domain text + term lexicon -> train.jsonl / valid.jsonl.")
    parser.add_argument("--text", nargs="+", required=True, help=".txt or .jsonl files with the raw text")
    parser.add_argument("--lexicon", required=True, help="one term per line, optionally term<TAB>frequency")
    parser.add_argument("--hard-lexicon", help="terms to mask at --hard-term-mask-prob")
    parser.add_argument("--out", required=True, help="folder for train.jsonl, valid.jsonl, stats.json")
    parser.add_argument("--documents", choices=("lines", "paragraphs"), default="lines",
                        help=".txt: one document per line, or documents separated by blank lines")
    parser.add_argument("--text-field", default="text", help=".jsonl: the field holding the text")
    parser.add_argument("--term-mask-prob", type=float, default=0.6, help="chance that a found term is masked")
    parser.add_argument("--hard-term-mask-prob", type=float, default=0.7, help="the same for hard terms")
    parser.add_argument("--mask-rate", type=float, default=0.22, help="share of maskable characters to mask")
    parser.add_argument("--max-span", type=int, default=3, help="longest random span, in characters or words")
    parser.add_argument("--max-chars", type=int, default=200, help="longest example, in characters")
    parser.add_argument("--valid-ratio", type=float, default=0.05, help="share of documents for validation")
    parser.add_argument("--noise", type=float, default=0.0, help="share of unmasked characters damaged")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tokenizer", help="model folder or hub name, for the token estimate")
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        prepare(parse_options())
    except PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
