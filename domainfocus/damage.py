"""What a damaged text is for restoration: undamaged parts and lost spans in order, read from runs of
markers (□□□, one per lost character) or from T5 sentinels, with each span's lost length when known."""

import dataclasses
import re

from domainfocus.lengths import source_length
from domainfocus.spans import SENTINEL, parse_spans


@dataclasses.dataclass
class Span:
    marker: str  # what marks the loss in the input: "□□□" or "<extra_id_3>"; kept when not restored
    length: int | None  # lost characters (lengths.source_length), None when unknown
    unit: str = "□"  # the marker of one character: shows characters the model could not write


@dataclasses.dataclass
class Document:
    text: str  # the input as given
    parts: list  # str (undamaged text) and Span, in order; "".join of them, markers included, is `text`
    plain: bool = False  # a text-to-text input without sentinels: the whole output is the restoration

    @property
    def spans(self):
        return [part for part in self.parts if isinstance(part, Span)]


def from_markers(text, marker="□", any_length=False):
    """A text where each run of `marker` is one lost span of as many characters as markers."""
    runs = re.compile("(?:" + re.escape(marker) + ")+")
    parts, position = [], 0
    for match in runs.finditer(text):
        parts += [text[position:match.start()],
                  Span(match.group(), None if any_length else len(match.group()) // len(marker), marker)]
        position = match.end()
    parts.append(text[position:])
    return Document(text, [part for part in parts if part != ""])


def from_sentinels(text, lengths=None):
    """A text in sentinel format; `lengths` gives each sentinel's lost characters (None entries: unknown).

    Without any sentinel it is a text-to-text input: the whole generated text is its restoration."""
    if not SENTINEL.search(text):
        return Document(text, [text], plain=True)
    parts, position = [], 0
    for number, match in enumerate(SENTINEL.finditer(text)):
        length = lengths[number] if lengths and number < len(lengths) else None
        parts += [text[position:match.start()], Span(match.group(), length)]
        position = match.end()
    parts.append(text[position:])
    return Document(text, [part for part in parts if part != ""])


def target_lengths(targets):
    """Each target span's source length: what a marker run would have shown."""
    return [source_length(text) or None for _, text in sorted(parse_spans(targets).items())]
