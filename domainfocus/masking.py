"""Lexicon-guided masking: the term finder, the masker that turns a text into a T5 span-corruption
example, and the documents it reads (cut at sentence ends, split into training and validation).
prepare.py writes its output once; data.py draws it afresh every epoch with the same Masker."""

import hashlib
import json
import logging
import os
import random
import re
import unicodedata

from domainfocus.spans import MAX_SPANS, SENTENCE_END, build_targets, normalize, sentinel

logger = logging.getLogger("domainfocus")

# Unicode punctuation (categories P*) of the Basic Multilingual Plane, as one character class:
# regular expressions test it in C, a hundred times faster than unicodedata per character.
PUNCTUATION_CLASS = "".join(re.escape(character) for character in map(chr, range(0x10000))
                            if unicodedata.category(character)[0] == "P")
PUNCTUATION = re.compile(f"[{PUNCTUATION_CLASS}]")
MASKABLE_CHARACTER = re.compile(f"[^\\s{PUNCTUATION_CLASS}]")
NOT_LETTER = re.compile(f"[\\d{PUNCTUATION_CLASS}]")  # digits and punctuation: what near-duplicates may differ in
UNIT = re.compile(f"[A-Za-z0-9]+|[^\\s{PUNCTUATION_CLASS}]")  # a Latin word or number, or one other character


class PrepareError(ValueError):
    """A problem the user can fix in the files or options."""


def maskable(text):
    """True when `text` may be masked: no punctuation and no leading or trailing whitespace."""
    return bool(text) and text == text.strip() and not PUNCTUATION.search(text)


def latin(character):
    """True for a Latin letter or digit: a term that starts or ends with one matches only as a whole word."""
    return character.isascii() and character.isalnum()


class Lexicon:
    """Longest-match term finder: the terms indexed by their first two characters (by the first alone
    when some term has only one), each prefix with the lengths of its terms, longest first.

    Two characters rather than one: with tens of thousands of terms nearly every character of the
    text starts some term, and trying every length known for that character took 1.6 to 1.8 times
    as long (the demo sentences, the masking benchmark's 20,000-term lexicon; tests/test_masking_cache.py
    keeps that algorithm as the reference the results must equal)."""

    def __init__(self, terms, hard_terms=()):
        self.hard = set(hard_terms)
        self.terms = set(terms) | self.hard
        # Which ends of each term are Latin (bit 1: the first character, bit 2: the last): the only
        # ends whose neighbours find has to look at, worked out once rather than at every candidate.
        self.latin_ends = {term: latin(term[0]) | latin(term[-1]) << 1 for term in self.terms}
        self.prefix = 2 if all(len(term) >= 2 for term in self.terms) else 1  # read_lexicon keeps 2 or more
        lengths = {}
        for term in self.terms:
            lengths.setdefault(term[:self.prefix], set()).add(len(term))
        self.lengths = {prefix: sorted(found, reverse=True) for prefix, found in lengths.items()}

    def find(self, text):
        """[(start, end)] of non-overlapping terms, leftmost-longest; Latin terms only as whole words."""
        found, position, size, prefix = [], 0, len(text), self.prefix
        lengths_by_prefix, latin_ends = self.lengths, self.latin_ends
        while position < size:
            for length in lengths_by_prefix.get(text[position:position + prefix], ()):
                end = position + length
                if end > size:
                    continue
                ends = latin_ends.get(text[position:end])
                if ends is None or (ends and ((ends & 1 and position and latin(text[position - 1]))
                                              or (ends & 2 and end < size and latin(text[end])))):
                    continue  # not a term, or a Latin end runs on into a Latin neighbour
                found.append((position, end))
                position = end
                break
            else:
                position += 1
        return found


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


def read_documents(paths, documents, text_field, group_field=""):
    """Yield (document, its group) one at a time from .txt and .jsonl files. The group is the value of
    `group_field` in a .jsonl record (a patient or record id), else None."""
    if group_field and any(not path.endswith(".jsonl") for path in paths):
        raise PrepareError(f"a group field ({group_field!r}) needs .jsonl text, where each record can carry it; "
                           "give .jsonl files or no group field.")
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
                    group = None
                    if group_field:
                        if record.get(group_field) in (None, ""):
                            raise PrepareError(f"{path}:{line_number}: needs a field \"{group_field}\" (the group "
                                               "field, --group-field or GROUP_FIELD), or no group field at all.")
                        group = str(record[group_field])
                    if record[text_field].strip():
                        yield record[text_field].strip(), group
                elif documents == "lines":
                    if line:
                        yield line, None
                elif line:
                    paragraph.append(line)
                elif paragraph:
                    yield "\n".join(paragraph), None
                    paragraph = []
            if paragraph:
                yield "\n".join(paragraph), None


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
        self.lexicon, self.max_span, self.noise = lexicon, max_span, noise
        self.term_probability, self.hard_probability, self.mask_rate = term_probability, hard_probability, mask_rate
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

    def example(self, text, terms_found=None):
        """({"inputs", "targets"}, spans chosen, (characters masked, maskable), lexicon terms found).
        `terms_found`: lexicon.find(text) when the caller kept it from an earlier draw; the terms of a
        text never change, only the draw does."""
        if terms_found is None:
            terms_found = self.lexicon.find(text)
        spans, masked, maskable_characters = self.choose_spans(text, terms_found)
        inputs, position = [], 0
        for index, (start, end, _) in enumerate(spans):
            inputs.append(self.add_noise(text[position:start]) + sentinel(index))
            position = end
        inputs.append(self.add_noise(text[position:]))
        targets = build_targets([text[start:end] for start, end, _ in spans])
        return {"inputs": "".join(inputs), "targets": targets}, spans, (masked, maskable_characters), terms_found


def near_key(text):
    """What makes two texts near-duplicates: their normal form (spans.normalize: NFKC, no whitespace)
    without digits and punctuation, so that
    two copies of one template that differ only in numbers (体温38.5℃ / 体温37.2℃) count as one."""
    return NOT_LETTER.sub("", normalize(text))


def digest(text):
    """63 bits of a text's hash, as an int (fits an int64 column): what the sets of seen texts hold."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") >> 1


def held_out(key, valid_ratio, seed):
    """True when the document (or group) `key` goes to validation: decided by a hash of the key and
    the seed, so identical texts and every document of a group always land on the same side."""
    value = int.from_bytes(hashlib.sha256(f"{seed}\x00{key}".encode("utf-8")).digest()[:8], "big")
    return value < valid_ratio * 2 ** 64


def split_documents(documents, valid_ratio, seed, max_chars, counts=None):
    """Yield ("train" or "valid", document, its examples) for (document, group) pairs. Documents are
    de-duplicated on their normal form first (spans.normalize: NFKC, no whitespace, so a copy that
    differs only in full-width punctuation or spaces is a repeat) (repeats are skipped and counted in counts["duplicates"]);
    the side is decided by a hash of the normal form, or of the group where there is one, so that no
    text and no group is on both sides."""
    seen = set()
    for document, group in documents:
        key = normalize(document)
        if not key:
            continue
        identity = digest(key)
        if identity in seen:
            if counts is not None:
                counts["duplicates"] = counts.get("duplicates", 0) + 1
            continue
        seen.add(identity)
        split = "valid" if held_out(key if group is None else "group:" + group, valid_ratio, seed) else "train"
        yield split, document, cut_examples(document, max_chars)


def text_digests(text):
    """(the digest of a text's normal form, the digest of its near-duplicate key)."""
    normal = normalize(text)  # once: this runs for every example of a corpus
    return digest(normal), digest(NOT_LETTER.sub("", normal))


def overlap(train, valid):
    """How many of the `valid` text_digests training shares: (the same text, the same but for digits
    and punctuation). A text the same as one in training counts in both."""
    same, alike = {text for text, _ in train}, {near for _, near in train}
    return sum(text in same for text, _ in valid), sum(near in alike for _, near in valid)


def report_overlap(counts, exact, near):
    """Record in the validation counts, and warn about, validation examples that training has seen:
    figures measured on them measure memory, not restoration."""
    counts.update(in_training=exact, near_training=near)
    if exact or near:
        logger.warning("validation: %d of %d examples also occur in the training data, %d more alike but for digits "
                       "and punctuation; figures measured on them show memory, not restoration. Split by content "
                       "(prepare.py does; GROUP_FIELD keeps a patient's documents on one side) or remove them from "
                       "VALID_FILE.", exact, counts["examples"], near - exact)
