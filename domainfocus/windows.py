"""Cutting a damaged document into the windows the model restores: whole sentences, about the size
of the examples it was trained on, with the undamaged sentences around them as context.

A document no longer than the longest training input (`Decoding.whole_tokens`) is one window, as in
training. A longer one is cut at sentence ends (a sentence is cut further only when it alone
exceeds the model's input): each damaged sentence, grouped with the damaged ones right after it up
to half a window, is the focus of one window, and whole undamaged sentences are added on both
sides, one at a time and alternating, while the window stays within `Decoding.window_tokens` (the
size of an average training example). A neighbour that is damaged itself ends the context on its
side: it is restored in a window of its own, and its gaps never become extra sentinels here (more
sentinels than its training examples had made the demo model restore long documents worse). Each
span is restored exactly once.
"""

import dataclasses
import itertools

from domainfocus.spans import MAX_SENTINELS, MAX_SPANS, SENTENCE_END, sentinel

UNKNOWN_SPAN_TARGET_TOKENS = 8  # target tokens planned for a span of unknown length


@dataclasses.dataclass
class Window:
    text: str  # the model's input: the window's text with its gaps as sentinels numbered from 0
    spans: list  # the Span objects it restores, in order (damage.Span)


def is_span(part):
    return not isinstance(part, str)


def span_target_tokens(span, length_aware=True):
    """Target tokens planned for a span when max_new_tokens bounds decoding: about one a character."""
    return span.length + 2 if span.length is not None and length_aware else UNKNOWN_SPAN_TARGET_TOKENS


def sentences(parts):
    """The parts grouped into sentences: a sentence ends after a SENTENCE_END character. A full stop
    right before a gap ends nothing (`38.□` lost its decimals), so a text part followed by a span is
    searched as if a character followed it."""
    groups, current = [], []
    for number, part in enumerate(parts):
        if is_span(part):
            current.append(part)
            continue
        start = 0
        followed = number + 1 < len(parts)
        for match in SENTENCE_END.finditer(part + ("x" if followed else "")):
            if match.end() > len(part):
                break
            current.append(part[start:match.end()])
            groups.append(current)
            current, start = [], match.end()
        if start < len(part):
            current.append(part[start:])
    if current:
        groups.append(current)
    return groups


def text_of(blocks):
    """The blocks as model input, their spans as sentinels numbered from 0 (a window never holds more
    than MAX_SPANS; a block measured before it is cut may, and any sentinel is one token)."""
    numbers = itertools.count()
    return "".join(sentinel(next(numbers) % MAX_SENTINELS) if is_span(part) else part
                   for block in blocks for part in block)


def split_in_two(block):
    """A sentence too large for a window, cut near its middle (between characters, or between spans)."""
    size = sum(1 if is_span(part) else len(part) for part in block)
    first, second, seen = [], [], 0
    for part in block:
        if seen >= size // 2:
            second.append(part)
        elif is_span(part) or seen + len(part) <= size // 2:
            first.append(part)
        else:
            cut = size // 2 - seen
            first.append(part[:cut])
            second.append(part[cut:])
        seen += 1 if is_span(part) else len(part)
    return [block for block in (first, second) if block]


class Cutter:
    """Measures blocks with the real tokenizer, each block once; a window's tokens are the sum of its
    blocks' (tokenized alone, a block can only gain a leading "▁"), checked once more as a whole."""

    def __init__(self, tokenizer, decoding):
        self.tokenizer = tokenizer
        self.limit = decoding.max_input_length
        self.whole = min(decoding.whole_tokens or self.limit, self.limit)
        self.size = min(decoding.window_tokens or self.whole, self.whole)
        self.budget = decoding.max_new_tokens
        self.length_aware = decoding.length_aware

    def tokens(self, blocks):
        texts = [text_of([block]) for block in blocks]
        return [len(ids) - 1 for ids in self.tokenizer(texts)["input_ids"]] if texts else []  # without </s>

    def fits(self, blocks, tokens, size):
        spans = [part for block in blocks for part in block if is_span(part)]
        # With every length known the constraint decides where decoding ends, not max_new_tokens.
        free = not self.length_aware or any(span.length is None for span in spans)
        planned = sum(span_target_tokens(span, self.length_aware) for span in spans) + 2 if free else 0
        return sum(tokens) + 1 <= size and len(spans) <= MAX_SPANS and planned <= self.budget

    def within_limit(self, text):
        return len(self.tokenizer(text)["input_ids"]) <= self.limit


def cut_windows(document, tokenizer, decoding):
    """The windows that restore `document` (damage.Document), each span in the focus of one."""
    cutter = Cutter(tokenizer, decoding)
    blocks = sentences(document.parts)
    tokens = cutter.tokens(blocks)
    if cutter.fits(blocks, tokens, cutter.whole) and cutter.within_limit(text_of(blocks)):
        return [window_of(blocks, range(len(blocks)))]
    blocks, tokens = fitting(blocks, tokens, cutter)
    windows, position = [], 0
    while position < len(blocks):
        if not any(map(is_span, blocks[position])):
            position += 1
            continue
        focus = [position]  # the damaged sentence and the damaged ones after it, up to half a window
        while (focus[-1] + 1 < len(blocks) and any(map(is_span, blocks[focus[-1] + 1])) and
               cutter.fits(blocks[focus[0]:focus[-1] + 2], tokens[focus[0]:focus[-1] + 2], cutter.size // 2)):
            focus.append(focus[-1] + 1)
        windows.append(with_context(blocks, tokens, focus, cutter))
        position = focus[-1] + 1
    return windows


def with_context(blocks, tokens, focus, cutter):
    """The window of the `focus` blocks, with whole undamaged neighbouring blocks added alternately on
    the left and right while it stays within the window size and the real tokenizer agrees."""
    first, last = focus[0], focus[-1]
    sides = [-1, 1]
    while sides:
        side = sides.pop(0)
        candidate = (first - 1, last) if side < 0 else (first, last + 1)
        added = candidate[0] if side < 0 else candidate[1]
        if added < 0 or added >= len(blocks) or any(map(is_span, blocks[added])) or not cutter.fits(
                blocks[candidate[0]:candidate[1] + 1], tokens[candidate[0]:candidate[1] + 1], cutter.size):
            continue
        first, last = candidate
        sides.append(side)
    chosen = range(first, last + 1)
    while not cutter.within_limit(text_of([blocks[index] for index in chosen])) and len(chosen) > len(focus):
        left = chosen.start < focus[0]  # drop a context sentence, the left one first
        chosen = range(chosen.start + left, chosen.stop - (not left))
    return window_of(blocks, chosen)


def window_of(blocks, indices):
    return Window(text_of([blocks[index] for index in indices]), [part for index in indices for part in blocks[index]
                                                                   if is_span(part)])


def plain_pieces(text, cutter):
    """A text without sentinels as [(the whitespace before it, piece)]: whole sentences packed up to a
    window (a sentence longer than the model's input is cut), restored one after another. A line
    break always ends a piece, since the tokenizer reads it as a space and the rewrite would lose it;
    the whitespace between two pieces is kept for joining their restorations."""
    sentences_of_text = sentences([text])
    blocks, tokens = fitting(sentences_of_text, cutter.tokens(sentences_of_text), cutter)
    pieces, current, size = [], "", 0
    for block, count in zip(blocks, tokens):
        if current and (size + count + 1 > cutter.size or "\n" in current[len(current.rstrip()):]):
            pieces.append(current)
            current, size = "", 0
        current, size = current + "".join(block), size + count
    pieces.append(current)
    result, carried = [], ""
    for piece in pieces:
        stripped = piece.strip()
        if stripped:
            result.append((carried + piece[:len(piece) - len(piece.lstrip())], stripped))
            carried = ""
        carried += piece[len(piece.rstrip()):] if stripped else piece
    return result


def fitting(blocks, tokens, cutter):
    """(blocks, their tokens) with each block that no window can hold cut in halves until it fits (a
    single span that the token budget cannot hold stays as it is and shows as left marked)."""
    result, counts = [], []
    for block, count in zip(blocks, tokens):
        if cutter.fits([block], [count], cutter.limit) or (len(block) == 1 and is_span(block[0])):
            result.append(block)
            counts.append(count)
            continue
        halves = split_in_two(block)
        if len(halves) < 2:
            result.append(block)
            counts.append(count)
            continue
        more, more_counts = fitting(halves, cutter.tokens(halves), cutter)
        result += more
        counts += more_counts
    return result, counts
