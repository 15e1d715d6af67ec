"""The decoding constraint of restoration: a logits processor that keeps generation in the span
format and fills each span of known length with exactly its number of lost characters, counted
by the rule of lengths.py (so `38.5℃` is reachable for five lost characters although the tokenizer
can only write `38.5°C`).

Written by hand because transformers 5 dropped constrained decoding (`force_words_ids`,
`constraints`) from the core library; `LogitsProcessor` is what remains.
"""

import bisect
import re

from lengths import UNKNOWN, lowest_count, read
from spans import MAX_SENTINELS, SENTINEL, sentinel

BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
EXCLUDED, BLANK = -1, 0  # what TokenTable.characters holds for a token never in a span, and for "▁"


class TokenTable:
    """What each token id writes into a span: its text (SentencePiece's "▁" as a space, <unk> as
    lengths.UNKNOWN), its characters without whitespace (`characters`, EXCLUDED for tokens that never
    belong in a span: padding, end, sentinels, byte pieces) and the fewest lost characters it can fill
    (`lowest`: `°C` or `mg` fill one)."""

    def __init__(self, tokenizer, vocabulary_size):
        import torch

        pieces = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocabulary_size))))
        excluded = {tokenizer.pad_token_id, tokenizer.eos_token_id, *tokenizer.all_special_ids}
        excluded.discard(tokenizer.unk_token_id)
        self.texts = []
        characters, lowest = [], []
        for token, piece in enumerate(pieces):
            if token == tokenizer.unk_token_id:
                text = UNKNOWN
            elif token in excluded or piece is None or SENTINEL.fullmatch(piece) or BYTE_PIECE.fullmatch(piece):
                text = None
            else:
                text = piece.replace("\u2581", " ")
            self.texts.append(text)
            characters.append(EXCLUDED if text is None else len("".join(text.split())))
            # <unk> writes at least one character, though in a reading it may complete an image with
            # what follows (`<unk>C` can be ℃ when the vocabulary lacks °), so it counts one here.
            lowest.append(EXCLUDED if text is None else 1 if text == UNKNOWN else lowest_count(text))
        self.characters = torch.full((vocabulary_size,), EXCLUDED, dtype=torch.long)
        self.characters[:len(characters)] = torch.tensor(characters, dtype=torch.long)
        self.lowest = torch.full((vocabulary_size,), EXCLUDED, dtype=torch.long)
        self.lowest[:len(lowest)] = torch.tensor(lowest, dtype=torch.long)
        self.sentinel_ids = torch.tensor(tokenizer.convert_tokens_to_ids([sentinel(k) for k in range(MAX_SENTINELS)]))
        self.sentinel_number = torch.full((vocabulary_size,), -1, dtype=torch.long)
        self.sentinel_number[self.sentinel_ids] = torch.arange(MAX_SENTINELS)
        self.eos = tokenizer.eos_token_id
        self.unk = tokenizer.unk_token_id
        # Tokens that may continue an image across a token boundary ("°" then "C"), by their text.
        self.starts = sorted((text, token) for token, text in enumerate(self.texts) if text and not text[0].isspace())
        self.continuations = {}  # pending image start -> (token ids, how many characters folding may save)

    def to(self, device):
        for name in ("characters", "lowest", "sentinel_ids", "sentinel_number"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def text(self, tokens):
        """What the tokens write, as lengths.read expects it."""
        return "".join(self.texts[token] or "" for token in tokens)

    def continuation(self, pending):
        """(token ids, savings) for the tokens that can complete an image that one of the strings in
        `pending` (lengths.Reading.pending) starts: folding that image can make the text count up to
        `savings` fewer characters than its parts."""
        if pending not in self.continuations:
            from lengths import foldable

            savings = {}
            for begun in pending:
                for image in foldable():
                    if not image.startswith(begun) or len(image) == len(begun):
                        continue
                    rest = image[len(begun):]
                    start = bisect.bisect_left(self.starts, (rest,))
                    while start < len(self.starts) and self.starts[start][0].startswith(rest):
                        token = self.starts[start][1]
                        savings[token] = max(savings.get(token, 0), len(image) - 1)
                        start += 1
                    for end in range(1, len(rest)):  # a token wholly inside the image
                        start = bisect.bisect_left(self.starts, (rest[:end],))
                        while start < len(self.starts) and self.starts[start][0] == rest[:end]:
                            token = self.starts[start][1]
                            savings[token] = max(savings.get(token, 0), len(begun) + end)
                            start += 1
            self.continuations[pending] = (list(savings), list(savings.values()))
        return self.continuations[pending]


class SpanConstraint:
    """A logits processor that keeps decoding in the restoration format, one span after another:
    <extra_id_0> span <extra_id_1> span ... <extra_id_n> </s>, sentinels in order, no end before the
    last span is closed, no special token but <unk> inside a span, and a span of known length closed
    exactly when its text can be read as that many lost characters (lengths.py); a token after which
    it could no longer be is masked. An unknown length only needs one character.

    The state of each hypothesis is read from its tokens at every step, so beam search may reorder
    hypotheses freely; what a span's text can count is cached per token sequence.
    """

    def __init__(self, table, lengths, num_beams):
        import torch

        self.table = table
        self.num_beams = num_beams
        longest = max((len(row) for row in lengths), default=0) + 1
        self.lengths = torch.tensor([[-1 if length is None else length for length in row] + [-1] * (longest - len(row))
                                     for row in lengths], dtype=torch.long, device=table.characters.device)
        self.span_counts = torch.tensor([len(row) for row in lengths], device=table.characters.device)
        self.readings = {}

    def reading(self, tokens):
        if tokens not in self.readings:
            self.readings[tokens] = read(self.table.text(tokens))
        return self.readings[tokens]

    def __call__(self, input_ids, scores):
        import torch

        table, rows, device = self.table, input_ids.shape[0], input_ids.device
        row_index = torch.arange(rows, device=device)
        window = row_index // self.num_beams
        generated = input_ids[:, 1:]  # after the decoder start token
        vocabulary = scores.shape[-1]
        if generated.shape[1]:
            numbers = table.sentinel_number[generated]
            positions = torch.arange(generated.shape[1], device=device)
            current = numbers.max(dim=1).values  # sentinels come in order: the largest is the open span
            last_sentinel = torch.where(numbers >= 0, positions, -1).max(dim=1).values
            last_was_blank = table.characters[generated[:, -1]] == BLANK
        else:
            current = torch.full((rows,), -1, device=device)
            last_sentinel = current
            last_was_blank = torch.zeros(rows, dtype=torch.bool, device=device)
        spans = self.span_counts[window]
        length = self.lengths[window, current.clamp(min=0, max=self.lengths.shape[1] - 1)]
        in_span = (current >= 0) & (current < spans)
        # What each open span holds so far, read in Python (a few dozen rows, cached): the fewest lost
        # characters it can fill, whether it can fill exactly its length now, and what folding the
        # next token might save.
        lowest, fits, continuing = [0] * rows, [False] * rows, []
        sequences, starts, wanted = generated.tolist(), last_sentinel.tolist(), length.tolist()
        for row, open_span in enumerate(in_span.tolist()):
            if not open_span:
                continue
            reading = self.reading(tuple(sequences[row][starts[row] + 1:]))
            lowest[row] = reading.lowest
            fits[row] = reading.fits(wanted[row]) if wanted[row] >= 0 else reading.lowest >= 1 or reading.open_ended
            if reading.pending and wanted[row] >= 0:
                continuing.append((row, reading.pending))
        lowest = torch.tensor(lowest, device=device)
        remaining = torch.where(length >= 0, length - lowest, torch.full_like(lowest, 1 << 30))
        token_lowest = table.lowest[:vocabulary]
        characters = table.characters[:vocabulary]
        content = (characters >= 1) & (token_lowest <= remaining[:, None])
        for row, pending in continuing:  # a token that completes an image may fill fewer characters
            tokens, saved = table.continuation(pending)
            if tokens:
                tokens = torch.tensor(tokens, device=device)
                keep = tokens < vocabulary
                tokens, saved = tokens[keep], torch.tensor(saved, device=device)[keep]
                content[row, tokens] |= token_lowest[tokens] - saved <= remaining[row]
        blank = (characters == BLANK) & ~last_was_blank[:, None] & (remaining > 0)[:, None]  # "▁" once before a piece
        allowed = (content | blank) & in_span[:, None]
        closes = in_span & torch.tensor(fits, device=device)
        next_sentinel = table.sentinel_ids[(current + 1).clamp(max=MAX_SENTINELS - 1)]
        allowed[row_index, next_sentinel] |= closes | (current < 0)
        allowed[row_index, table.eos] |= (current >= spans) | ~allowed.any(dim=1)  # never a row with no way on
        return scores.masked_fill(~allowed, float("-inf"))
