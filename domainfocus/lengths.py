"""How many lost characters a restored text fills, when the tokenizer writes NFKC-normalised text.

A marker stands for one character of the source as it was written. T5's and mT5's SentencePiece
tokenizers normalise with NFKC, so the model can write `°C` but never `℃`, `mg` but never `㎎`,
`II` but never `Ⅱ`. The rule, shared by decoding, evaluation and restore.py:

* A text's source length is its number of characters after NFC composition, whitespace not counted.
* A generated text fills `n` lost characters when it can be read as `n` source characters: each of
  its characters counts one, except that a run which is the NFKC image of one compatibility
  character of FOLDABLE_RANGES (`°C` of `℃`, `mg` of `㎎`, `II` of `Ⅱ`, `1⁄2` of `½`) may count one in all.
  A run only folds where it stands apart from letters (or digits) on each side, so that `HIV`,
  `vitamin` or `1.5` never fold.
* The restored text shows the compatibility character where the length needs the fold (`38.5℃`
  for five lost characters, `38.5°C` for six).
* `<unk>` (characters the vocabulary cannot write) fills any number of lost characters; a span that
  holds one is shown with markers for what it could not write and flagged for review.
"""

import dataclasses
import functools
import itertools
import re
import unicodedata

# Compatibility characters that clinical text writes and whose NFKC image is several characters:
# fractions (½ ⅓), punctuation (… ‥ ‼), ℃ and ℉, Roman numerals (Ⅱ ⅳ), parenthesized Chinese
# numerals (㈠ ... ㈩) and the squared units of CJK compatibility (㎎ ㎏ ㎖ ㏄ ㎡ ㎪ ㏈). Left out,
# because every ordinary word or number they spell would become ambiguous: ™ № ℡ ⅟ (TM, No, TEL,
# 1⁄), squared abbreviations that spell words or common short forms (㏌ "in", ㍲ "da", ㏒ "log",
# ㎳ "ms") and enclosed numbers (⑩ "10", ㏠ "1日", ⒈ "1.").
FOLDABLE_RANGES = ((0x00BC, 0x00BE), (0x2025, 0x2026), (0x203C, 0x203C), (0x2047, 0x2049), (0x2103, 0x2103),
                   (0x2109, 0x2109), (0x2150, 0x215E), (0x2160, 0x217F), (0x3220, 0x3229), (0x3380, 0x33AC),
                   (0x33B4, 0x33C1), (0x33C3, 0x33C4), (0x33C8, 0x33C9), (0x33D9, 0x33D9), (0x33DE, 0x33DF))
UNKNOWN = "\x00"  # stands for <unk> in a text being measured
UNKNOWN_SOURCE = "\ufffd"  # the replacement character: a character already lost, which the tokenizer drops


def source_length(text):
    """Characters as a reader counts them: NFC-composed; whitespace, control and format characters
    (zero-width spaces, direction marks: the tokenizer writes nothing for them) not counted."""
    return len(visible(unicodedata.normalize("NFC", text)))


def visible(text):
    return "".join(character for character in text if not character.isspace() and character != UNKNOWN_SOURCE
                   and unicodedata.category(character) not in ("Cc", "Cf"))


@functools.cache
def foldable():
    """{NFKC image (whitespace removed): the compatibility character it comes from}."""
    images = {}
    for first, last in FOLDABLE_RANGES:
        for code in range(first, last + 1):
            image = "".join(unicodedata.normalize("NFKC", chr(code)).split())
            if len(image) >= 2:
                images.setdefault(image, chr(code))
    return images


@functools.cache
def images_by_first_character():
    by_first = {}
    for image in foldable():
        by_first.setdefault(image[0], []).append(image)
    return by_first


@functools.cache
def image_prefixes():
    """Every proper prefix of an image: what a text may end with when an image continues in the next token."""
    return {image[:end] for image in foldable() for end in range(1, len(image))}


def kind(character):
    return "letter" if character.isalpha() and character.isascii() else "digit" if character.isdigit() else None


def touches(first, second):
    return kind(first) is not None and kind(first) == kind(second)


def always_apart(image):
    """Upper-case Roman numerals and fractions fold whatever touches them (`ⅡA期`, `NYHAⅢ级`, `1½`)."""
    return set(image) <= set("IVXLCDM") or "\u2044" in image


def kept_apart(image, neighbour, edge):
    """Whether `neighbour`, next to the image's `edge` character, keeps the image from folding: a letter
    touching a letter or a digit a digit does (so `vitamin`, `HIV` with lower-case or unit runs, `5mga` never fold)."""
    return not always_apart(image) and touches(neighbour, edge)


def stands_apart(text, start, end, image):
    """A run text[start:end] that writes `image` folds only where nothing at its edges keeps it apart."""
    left = start > 0 and kept_apart(image, text[start - 1], text[start])
    return not (left or end < len(text) and kept_apart(image, text[end], text[end - 1]))


KINDS = (None, "letter", "digit")  # what the next character can be, as `touches` sees it
PLACEHOLDERS = {None: "", "letter": "j", "digit": "\u0660"}  # of each kind, and in no image (٠: Arabic zero)


def begins_image(end, before=None):
    """Whether `end` is the start of an image, not all of it, that the character `before` it does not
    keep apart (an <unk> in `end` standing for any character: the rest of the image, still to come,
    may write the characters that make it one)."""
    return any(len(image) > len(end) and all(have in (want, UNKNOWN) for have, want in zip(end, image))
               and not (before and kept_apart(image, before, end[0])) for image in starting_with(end[0]))


@functools.cache
def starting_with(character):
    """The images that may start with `character` (all of them for an <unk>)."""
    return tuple(images_by_first_character().get(character, ())) if character != UNKNOWN else tuple(foldable())


@dataclasses.dataclass(frozen=True)
class Reading:
    """The source lengths a generated text can stand for."""

    counts: frozenset  # exact source lengths it can be read as, an <unk> counted as one
    open_ended: bool  # it holds <unk>: any length from min(counts) up
    before: tuple  # the fewest it counts once a character of each kind in KINDS follows it
    pending: tuple  # (end, fewest before that end) for each end of it that starts an image the next
    #                 token may complete (standing apart on the left)
    last: int  # the kind (an index of KINDS) of its last character: a token starting alike touches it

    @property
    def lowest(self):
        return min(self.counts)

    def fits(self, length):
        return length in self.counts or (self.open_ended and length >= self.lowest)


def matches(text, position, image):
    """`image` written at text[position:], an <unk> standing for any of its characters (in either),
    but at least one character written for real: a run of <unk>s alone is never read as an image."""
    piece = text[position:position + len(image)]
    return (len(piece) == len(image) and any(have == want != UNKNOWN for have, want in zip(piece, image))
            and all(have in (want, UNKNOWN) or want == UNKNOWN for have, want in zip(piece, image)))


def reachable_counts(text):
    """Every source length `text` can be read as (an <unk> counted as one, or as part of an image).
    With an <unk>, whose reading is open-ended anyway, only the fewest is kept."""
    fewest = UNKNOWN in text
    reachable = [set() for _ in range(len(text) + 1)]
    reachable[0].add(0)
    by_first = images_by_first_character()
    for position, character in enumerate(text):
        counts = reachable[position]
        if not counts:
            continue
        if fewest:
            counts = {min(counts)}
        if character.isspace():
            reachable[position + 1].update(counts)
            continue
        reachable[position + 1].update(count + 1 for count in counts)
        for image in by_first.get(character, ()) if character != UNKNOWN else foldable():
            end = position + len(image)
            written = matches(text, position, image) if fewest else text.startswith(image, position)  # (no <unk>)
            if written and stands_apart(text, position, end, image):
                reachable[end].update(count + 1 for count in counts)
    return {min(reachable[-1])} if fewest else reachable[-1]


def lowest_followed(text, kind):
    """The fewest source characters `text` counts once a character of `kind` follows it (a letter
    after `mg` keeps it from folding)."""
    placeholder = PLACEHOLDERS[kind]
    return min(reachable_counts(text + placeholder)) - len(placeholder)


@functools.cache
def written_image():
    """A pattern that finds any image written in a text: a text without one can never fold."""
    return re.compile("|".join(map(re.escape, sorted(foldable(), key=len, reverse=True))))


def read(text):
    """The Reading of `text` (generated, NFKC); whitespace counts nothing and no image crosses it;
    UNKNOWN marks an <unk>. Counted after NFC composition, as source_length counts (`e` + `◌́` is one)."""
    text = unicodedata.normalize("NFC", text)
    last = KINDS.index(kind(text[-1])) if text else 0
    if UNKNOWN not in text and written_image().search(text) is None:
        # Most spans (CJK words, Latin words without a unit) write no image, so nothing folds and every
        # count is the plain one; only an end that begins an image needs a look. The decoding constraint
        # reads every partial span at every step; the general walk below was its bottleneck.
        counted = list(itertools.accumulate((not character.isspace() for character in text), initial=0))
        pending = tuple((text[start:], counted[start]) for start in range(max(len(text) - 6, 0), len(text))
                        if begins_image(text[start:], text[start - 1] if start else None))
        return Reading(frozenset({counted[-1]}), False, (counted[-1],) * len(KINDS), pending, last)
    pending = tuple((text[start:], lowest_followed(text[:start], kind(text[start])))
                    for start in range(max(len(text) - 6, 0), len(text))
                    if begins_image(text[start:], text[start - 1] if start else None))
    counts = frozenset(reachable_counts(text))
    before = tuple(min(counts) if kind_ is None else lowest_followed(text, kind_) for kind_ in KINDS)
    return Reading(counts, UNKNOWN in text, before, pending, last)


def lowest_count(text, touched=False):
    """The fewest source characters `text` can stand for (whole images folded); `touched`: with a
    character of the same kind as its first right before it (`g` before `mg` keeps it from folding)."""
    placeholder = PLACEHOLDERS[kind(text[0])] if touched and text else ""
    return min(reachable_counts(placeholder + text)) - len(placeholder)


def shown(text, length):
    """`text` as the restoration shows it for `length` lost characters: with the fewest folds that
    make its source length `length` (`38.5°C` -> `38.5℃` for 5), or as it is when it needs no fold
    or none fits."""
    text = unicodedata.normalize("NFC", text)
    if length is None or source_length(text) == length or UNKNOWN in text:
        return text
    images, by_first = foldable(), images_by_first_character()
    # best[i][count]: the fewest folds reading text[:i] as `count` source characters, and how.
    best = [dict() for _ in range(len(text) + 1)]
    best[0][0] = (0, "")
    for position, character in enumerate(text):
        for count, (folds, written) in best[position].items():
            steps = [(position + 1, character, 0 if character.isspace() else 1, 0)]
            steps += [(position + len(image), images[image], 1, 1) for image in by_first.get(character, ())
                      if text.startswith(image, position)
                      and stands_apart(text, position, position + len(image), image)]
            for end, piece, counted, fold in steps:
                known = best[end].get(count + counted)
                if known is None or known[0] > folds + fold:
                    best[end][count + counted] = (folds + fold, written + piece)
    chosen = best[-1].get(length)
    return text if chosen is None else chosen[1]
