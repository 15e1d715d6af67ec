"""The decoding constraint of restoration: a logits processor that keeps generation in the span
format and fills each span of known length with exactly its number of lost characters, counted
by the rule of lengths.py (so `38.5℃` is reachable for five lost characters although the tokenizer
can only write `38.5°C`).

Written by hand because transformers 5 dropped constrained decoding (`force_words_ids`,
`constraints`) from the core library; `LogitsProcessor` is what remains.
"""

import bisect
import re
import unicodedata

from domainfocus.lengths import KINDS, UNKNOWN, kind, lowest_count, read
from domainfocus.spans import MAX_SENTINELS, SENTINEL, sentinel

BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
EXCLUDED, BLANK = -1, 0  # what TokenTable.characters holds for a token never in a span, and for "▁"
READINGS_KEPT = 200_000  # partial spans whose Reading is cached (a few hundred bytes each)


class TokenTable:
    """What each token id writes into a span: its text (SentencePiece's "▁" as a space, <unk> as
    lengths.UNKNOWN), its characters without whitespace (`characters`, EXCLUDED for tokens that never
    belong in a span: padding, end, sentinels, byte pieces), the fewest lost characters it can fill
    (`°C` or `mg` fill one), the fewest after a character of the kind it starts with (`g` before `mg`
    keeps it from folding) and that kind (an index of lengths.KINDS): `classes` numbers the tokens
    alike in these, whose values `class_lowest`, `class_touched` and `class_kinds` hold."""

    def __init__(self, tokenizer, vocabulary_size):
        import torch

        pieces = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocabulary_size))))
        excluded = {tokenizer.pad_token_id, tokenizer.eos_token_id, *tokenizer.all_special_ids}
        excluded.discard(tokenizer.unk_token_id)
        self.texts = []
        characters, lowest, touched, kinds = [], [], [], []
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
            combining = bool(text) and unicodedata.combining(text[0]) > 0  # may compose with the character before
            lowest.append(EXCLUDED if text is None else 1 if text == UNKNOWN else lowest_count(text) - combining)
            touched.append(EXCLUDED if text is None else 1 if text == UNKNOWN else
                           lowest_count(text, touched=True) - combining)
            kinds.append(KINDS.index(kind(text[0])) if text else 0)
        def padded(values, fill):  # one value per token id of the model's vocabulary
            return values + [fill] * (vocabulary_size - len(values))

        self.characters = torch.tensor(padded(characters, EXCLUDED), dtype=torch.long)
        # Tokens alike in all of these are masked alike: the constraint decides per class (a few hundred,
        # against mT5's 250,112 tokens) and spreads the decision over the vocabulary in one pass.
        signature = torch.tensor([padded(kinds, 0), padded(lowest, EXCLUDED), padded(touched, EXCLUDED),
                                  padded([min(count, BLANK + 1) for count in characters], EXCLUDED)])
        kept, self.classes = torch.unique(signature, dim=1, return_inverse=True)
        self.class_kinds, self.class_lowest, self.class_touched, class_characters = kept
        self.class_content, self.class_blank = class_characters > BLANK, class_characters == BLANK
        self.sentinel_ids = torch.tensor(tokenizer.convert_tokens_to_ids([sentinel(k) for k in range(MAX_SENTINELS)]))
        self.sentinel_number = torch.full((vocabulary_size,), -1, dtype=torch.long)
        self.sentinel_number[self.sentinel_ids] = torch.arange(MAX_SENTINELS)
        self.eos = tokenizer.eos_token_id
        self.unk = tokenizer.unk_token_id
        # Tokens that may continue an image across a token boundary ("°" then "C"), by their text.
        self.starts = sorted((text, token) for token, text in enumerate(self.texts) if text and not text[0].isspace())
        self.continuations = {}  # an image's start -> (token ids, the fewest characters each adds)
        self.completions = {}  # (image, characters written) -> whether tokens can write the rest
        self.readings = {}  # a span's tokens so far -> lengths.Reading, shared by every batch decoded

    def to(self, device):
        for name in ("characters", "sentinel_ids", "sentinel_number", "classes", "class_kinds", "class_lowest",
                     "class_touched", "class_content", "class_blank"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def text(self, tokens):
        """What the tokens write, as lengths.read expects it."""
        return "".join(self.texts[token] or "" for token in tokens)

    def continuation(self, begun):
        """The tokens that continue an image whose first characters `begun` end the text so far (`°`
        then `C`), with the fewest characters the image and the rest of the token then add: tensors
        (token ids, characters added). A token that would keep the image from folding (a letter right
        after `mm`) is not among them; <unk> is, for any character of the image it may stand for."""
        if begun not in self.continuations:
            import torch

            from domainfocus.lengths import PLACEHOLDERS, foldable, kept_apart, reachable_counts

            added = {}

            def offer(token, count):
                added[token] = min(added.get(token, count), count)

            for image in foldable():
                if len(image) <= len(begun) or not all(have in (want, UNKNOWN) for have, want in zip(begun, image)):
                    continue  # (an <unk> in `begun` matches anything)
                rest = image[len(begun):]
                if self.unk is not None and (len(rest) == 1 or self.completable(image, len(begun) + 1)):
                    offer(self.unk, 1)
                start = bisect.bisect_left(self.starts, (rest[:1],))
                while start < len(self.starts) and self.starts[start][0].startswith(rest[:1]):
                    text, token = self.starts[start]
                    start += 1
                    if rest.startswith(text) and len(text) < len(rest):  # wholly inside the image
                        if self.completable(image, len(begun) + len(text)):  # and the vocabulary can finish it
                            offer(token, 1)
                    elif text.startswith(rest):
                        after = text[len(rest):]
                        if after and kept_apart(image, after[0], image[-1]):
                            continue
                        placeholder = PLACEHOLDERS[kind(image[-1])]  # the image's end, folding with nothing
                        offer(token, 1 + min(reachable_counts(placeholder + after)) - len(placeholder))
            device = self.characters.device
            self.continuations[begun] = (torch.tensor(list(added), dtype=torch.long, device=device),
                                         torch.tensor(list(added.values()), dtype=torch.int32, device=device))
        return self.continuations[begun]

    def completable(self, image, done):
        """Whether tokens can write image[done:], the rest of an image, so that it still folds."""
        from domainfocus.lengths import kept_apart

        rest = image[done:]
        if (image, done) not in self.completions:
            self.completions[image, done] = False
            start = bisect.bisect_left(self.starts, (rest[:1],))
            while start < len(self.starts) and self.starts[start][0].startswith(rest[:1]):
                text = self.starts[start][0]
                start += 1
                finishes = text.startswith(rest) and (len(text) == len(rest)
                                                      or not kept_apart(image, text[len(rest)], rest[-1]))
                if finishes or rest.startswith(text) and len(text) < len(rest) and self.completable(image,
                                                                                                    done + len(text)):
                    self.completions[image, done] = True
                    break
        return self.completions[image, done]


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

    def reading(self, tokens):
        readings = self.table.readings  # kept across batches: the same words begin spans again and again
        if tokens not in readings:
            if len(readings) >= READINGS_KEPT:
                readings.clear()
            readings[tokens] = read(self.table.text(tokens))
        return readings[tokens]

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
        # characters it counts before a token of each kind, whether it fills its length now, and the
        # images its end begins.
        before, last, fits, continuing = [(0,) * len(KINDS)] * rows, [0] * rows, [False] * rows, []
        sequences, starts, wanted = generated.tolist(), last_sentinel.tolist(), length.tolist()
        for row, open_span in enumerate(in_span.tolist()):
            if not open_span:
                continue
            written = sequences[row][starts[row] + 1:]
            if wanted[row] < 0:  # an unknown length only needs a character
                fits[row] = any(table.characters[token] >= 1 for token in written)
                continue
            reading = self.reading(tuple(written))
            before[row], last[row], fits[row] = reading.before, reading.last, reading.fits(wanted[row])
            continuing += [(row, begun, base) for begun, base in reading.pending]
        # A token fits when the text can still be read as at most `length` characters after it: what the
        # text counts once a character of the token's kind follows, plus what the token counts after
        # the text's last character (they touch when they are of one kind).
        room = torch.where(length[:, None] >= 0, length[:, None] - torch.tensor(before, device=device), 1 << 30)
        room, last = room.to(torch.int32), torch.tensor(last, device=device)
        kinds = table.class_kinds
        touching = (kinds[None, :] == last[:, None]) & (last[:, None] > 0)  # of the kind the text ends with
        counted = torch.where(touching, table.class_touched, table.class_lowest)
        content = (counted <= room.gather(1, kinds.expand(rows, -1))) & table.class_content
        blank = table.class_blank & ~last_was_blank[:, None] & (room[:, :1] > 0)  # "▁" once before a piece
        by_class = (content | blank) & in_span[:, None]
        allowed = by_class.gather(1, table.classes[:vocabulary].expand(rows, -1))  # the table is as wide as the scores
        some_way = by_class.any(dim=1)
        for row, begun, base in continuing:  # or when it continues an image the span's end began
            tokens, added = table.continuation(begun)
            continues = base + added <= wanted[row]
            allowed[row, tokens] |= continues
            some_way[row] |= continues.any()
        closes = in_span & torch.tensor(fits, device=device)
        next_sentinel = table.sentinel_ids[(current + 1).clamp(max=MAX_SENTINELS - 1)]
        allowed[row_index, next_sentinel] |= closes | (current < 0)
        some_way |= closes | (current < 0)
        allowed[row_index, table.eos] |= (current >= spans) | ~some_way  # never a row with no way on
        return torch.where(allowed, scores, float("-inf"))
