"""Restoration: a damaged text in, restored text out, every lost span accounted for.

One definition of decoding, shared by evaluation during training (modeling.py) and restore.py,
so that best/ restores exactly as it was evaluated. Use it from Python:

    from restoration import Restorer
    restorer = Restorer.load("runs/demo/best")               # once
    results = restorer.restore(["予阿□□□□治疗。"])          # any number of texts, any length

Each result is {"inputs", "restored", "spans": [{"text", "confidence", "alternatives", "review"}]}.

What it guarantees:
* Every lost span appears in the result, in order. A span the model did not finish (nothing
  generated, token budget spent, no token fits) keeps its original marker in `restored`, with
  text "" and confidence None. The undamaged text is copied character for character.
* Length-aware: a span whose length is known (one marker per lost character) is restored with
  exactly that many characters, whitespace not counted, by masking the logits during decoding.
* Long texts are cut into windows at sentence ends: each damaged sentence is restored once, with
  the undamaged text around it as context on both sides. Nothing is truncated.
* Confidence of a span = the model's probability of its tokens followed by the closing sentinel,
  given the input and the best beam's spans before it (product of softmax probabilities, without
  the length mask). Candidates (the beams' texts, fitting lexicon terms) are ranked by it.
"""

import dataclasses
import math
import re

from spans import MAX_SENTINELS, SENTENCE_END, SENTINEL, SPECIAL_TOKENS, build_targets, parse_spans, sentinel

MAX_WINDOW_SPANS = MAX_SENTINELS - 1  # the closing sentinel of a window needs a number too
UNKNOWN_SPAN_TARGET_TOKENS = 8  # target tokens planned for a span of unknown length when cutting windows
LEXICON_SCORED_PER_SPAN = 64  # at most this many lexicon terms scored for one span (likeliest first tokens)
REVIEW_MARKS = ("⟦", "⟧")  # around a restoration flagged for review in `restored`


@dataclasses.dataclass
class Decoding:
    """How a trained model restores text. Saved with the model in generation_config.json."""

    num_beams: int = 1
    length_aware: bool = True  # known span lengths constrain decoding
    max_input_length: int = 512  # tokens per window
    max_new_tokens: int = 256  # tokens generated per window
    batch_size: int = 16

    SAVED = ("num_beams", "length_aware", "max_input_length", "max_new_tokens")

    @classmethod
    def of_model(cls, model, **overrides):
        """The settings saved with `model` (defaults where it has none), then `overrides` that are not None."""
        saved = model.generation_config
        values = {name: getattr(saved, name) for name in cls.SAVED if getattr(saved, name, None) is not None}
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)

    def save_to(self, model):
        """Make `model.save_pretrained` write these settings into generation_config.json."""
        for name in self.SAVED:
            setattr(model.generation_config, name, getattr(self, name))
        # A generation config derived from the model config drops unknown keys when it is loaded
        # again (transformers 5); marked as a config of its own, it keeps length_aware and max_input_length.
        model.generation_config._from_model_config = False


@dataclasses.dataclass
class Span:
    marker: str  # what marks the loss in the input: "□□□" or "<extra_id_3>"; kept when not restored
    length: int | None  # lost characters (whitespace not counted), None when unknown


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
        parts += [text[position:match.start()], Span(match.group(), None if any_length else
                                                     len(match.group()) // len(marker))]
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
    """Each target span's characters without whitespace: what a marker run would have shown."""
    return [len("".join(text.split())) or None for _, text in sorted(parse_spans(targets).items())]


# --- windows ----------------------------------------------------------------------------------

def span_target_tokens(span):
    return span.length + 2 if span.length is not None else UNKNOWN_SPAN_TARGET_TOKENS


def sentence_blocks(parts, most_characters, most_target):
    """Parts grouped into sentences (blocks). A longer stretch without a sentence end is cut so that
    no block holds more than `most_characters` characters and spans, or spans planned for more than
    `most_target` target tokens: a token holds at least one character, so these bound the tokens."""
    blocks, current, size, target = [], [], 0, 0

    def close():
        nonlocal current, size, target
        if current:
            blocks.append(current)
        current, size, target = [], 0, 0

    for part in parts:
        if isinstance(part, Span):
            if current and (size + 1 > most_characters or target + span_target_tokens(part) > most_target):
                close()
            current.append(part)
            size, target = size + 1, target + span_target_tokens(part)
            continue
        start = 0
        ends = [match.end() for match in SENTENCE_END.finditer(part)]
        while start < len(part):
            end = min([end for end in ends if end > start] + [len(part)])
            end = min(end, start + max(most_characters - size, 1))
            current.append(part[start:end])
            size += end - start
            if end in ends or size >= most_characters:
                close()
            start = end
    close()
    return blocks


@dataclasses.dataclass
class Window:
    text: str  # the model's input: the window's text with sentinels numbered from 0
    spans: list  # the Span objects it restores, in order


def window_text(blocks):
    numbers = iter(range(MAX_SENTINELS))
    return "".join(sentinel(next(numbers)) if isinstance(part, Span) else part for block in blocks for part in block)


def cut_windows(document, tokenizer, decoding):
    """Windows of at most max_input_length tokens and MAX_WINDOW_SPANS spans, cut at sentence ends.

    A document that fits is one window, as in training. A longer one gets a window per damaged
    sentence, with the undamaged text on both sides as context, as much as fits, up to the next
    lost span: every gap in a window is its own to restore, numbered from 0 as in training, and
    each span is restored once. Each window's real token count is checked; nothing is truncated.
    """
    limit, budget = decoding.max_input_length, decoding.max_new_tokens

    def make(before, focus, after):
        members = [part for block in focus for part in block if isinstance(part, Span)]
        if len(members) > MAX_WINDOW_SPANS:
            return False, None
        text = window_text(before + focus + after)
        return len(tokenizer(text)["input_ids"]) <= limit, Window(text, members)

    fits, whole = make([], [document.parts], [])
    if fits:
        return [whole]
    blocks = sentence_blocks(document.parts, max(min(limit // 4, MAX_WINDOW_SPANS // 4), 4), max(budget // 2, 1))
    return [window for position, block in enumerate(blocks) if any(isinstance(part, Span) for part in block)
            for window in focus_windows(blocks, position, make)]


def undamaged_side(block, side):
    """The text of a context block next to the focus: all of it when it lost nothing, else only what
    lies between its nearest lost span and the focus. Returns (parts, whether context may go on)."""
    lost = [position for position, part in enumerate(block) if isinstance(part, Span)]
    if not lost:
        return block, True
    return (block[lost[-1] + 1:] if side == "left" else block[:lost[0]]), False


def focus_windows(blocks, position, make):
    """The window(s) restoring the spans of blocks[position], with as much context as fits."""
    fits, window = make([], [blocks[position]], [])
    if not fits:  # a block whose tokens outnumber its characters: cut it finer
        block = blocks[position]
        finer = sentence_blocks(block, max(sum(len(part) if isinstance(part, str) else 1 for part in block) // 2, 1), 1)
        if len(finer) == 1:
            return [window]  # a single span that the budget cannot hold: it will show as left marked
        pieces = blocks[:position] + finer + blocks[position + 1:]
        return [window for offset in range(len(finer)) if any(isinstance(part, Span) for part in finer[offset])
                for window in focus_windows(pieces, position + offset, make)]
    before, after = [], []
    left, right = position - 1, position + 1
    while left >= 0 or right < len(blocks):
        if left >= 0:
            parts, more = undamaged_side(blocks[left], "left")
            fits, candidate = make([parts] + before, [blocks[position]], after)
            left = left - 1 if fits and more else -1
            if fits:
                before, window = [parts] + before, candidate
        if right < len(blocks):
            parts, more = undamaged_side(blocks[right], "right")
            fits, candidate = make(before, [blocks[position]], after + [parts])
            right = right + 1 if fits and more else len(blocks)
            if fits:
                after, window = after + [parts], candidate
    return [window]


# --- decoding -----------------------------------------------------------------------------------

class TokenTable:
    """What each token id contributes to a span: its characters (whitespace not counted), or -1 for
    tokens that never belong in a span (padding, end, unknown, sentinels, byte pieces)."""

    def __init__(self, tokenizer, vocabulary_size):
        import torch

        pieces = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocabulary_size))))
        excluded = {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id,
                    *tokenizer.all_special_ids}
        characters = [-1 if token in excluded or piece is None or SENTINEL.fullmatch(piece)
                      or re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece) else len("".join(piece.replace("\u2581", " ").split()))
                      for token, piece in enumerate(pieces)]
        self.characters = torch.full((vocabulary_size,), -1, dtype=torch.long)
        self.characters[:len(characters)] = torch.tensor(characters, dtype=torch.long)
        self.sentinel_ids = torch.tensor(tokenizer.convert_tokens_to_ids([sentinel(k) for k in range(MAX_SENTINELS)]))
        self.sentinel_number = torch.full((vocabulary_size,), -1, dtype=torch.long)
        self.sentinel_number[self.sentinel_ids] = torch.arange(MAX_SENTINELS)
        self.eos = tokenizer.eos_token_id

    def to(self, device):
        for name in ("characters", "sentinel_ids", "sentinel_number"):
            setattr(self, name, getattr(self, name).to(device))
        return self


class SpanConstraint:
    """A logits processor that keeps decoding in the restoration format, one span after another:
    <extra_id_0> span <extra_id_1> span ... <extra_id_n> </s>, sentinels in order, no end before the
    last span is closed, no special token inside a span, and a span of known length closed exactly
    when it holds that many characters (a token that would overshoot is masked). An unknown length
    only needs one character. Written by hand because transformers 5 dropped constrained decoding
    (`force_words_ids`, `constraints`) from the core library; `LogitsProcessor` is what remains.

    The state of each hypothesis is read from its tokens at every step (vectorised), so beam search
    may reorder hypotheses freely.
    """

    def __init__(self, table, lengths, num_beams):
        import torch

        self.table = table
        self.num_beams = num_beams
        longest = max((len(row) for row in lengths), default=0) + 1
        self.lengths = torch.tensor([[(-1 if length is None else length) for length in row] + [-1] * (longest - len(row))
                                     for row in lengths], dtype=torch.long, device=table.characters.device)
        self.span_counts = torch.tensor([len(row) for row in lengths], device=table.characters.device)

    def __call__(self, input_ids, scores):
        import torch

        table, rows = self.table, input_ids.shape[0]
        row_index = torch.arange(rows, device=input_ids.device)
        window = row_index // self.num_beams
        generated = input_ids[:, 1:]  # after the decoder start token
        characters = table.characters[:scores.shape[-1]]
        if generated.shape[1]:
            numbers = table.sentinel_number[generated]
            positions = torch.arange(generated.shape[1], device=input_ids.device)
            current = numbers.max(dim=1).values  # sentinels come in order: the largest is the open span
            last_sentinel = torch.where(numbers >= 0, positions, -1).max(dim=1).values
            written = (table.characters[generated].clamp(min=0) * (positions > last_sentinel[:, None])).sum(dim=1)
            last_was_blank = table.characters[generated[:, -1]] == 0
        else:
            current = torch.full((rows,), -1, device=input_ids.device)
            written = torch.zeros(rows, dtype=torch.long, device=input_ids.device)
            last_was_blank = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
        spans = self.span_counts[window]
        length = self.lengths[window, current.clamp(min=0, max=self.lengths.shape[1] - 1)]
        in_span = (current >= 0) & (current < spans)
        remaining = torch.where(length >= 0, length - written, torch.full_like(written, 1 << 30))
        content = (characters >= 1) & (characters <= remaining[:, None])
        blank = (characters == 0) & ~last_was_blank[:, None] & (remaining > 0)[:, None]  # "▁" once before a piece
        allowed = (content | blank) & in_span[:, None]
        closes = in_span & torch.where(length >= 0, written == length, written >= 1)
        next_sentinel = table.sentinel_ids[(current + 1).clamp(max=MAX_SENTINELS - 1)]
        allowed[row_index, next_sentinel] |= closes | (current < 0)
        allowed[row_index, table.eos] |= (current >= spans) | ~allowed.any(dim=1)  # never a row with no way on
        return scores.masked_fill(~allowed, float("-inf"))


# --- restoring ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Candidate:
    text: str
    tokens: list  # token ids of the span, without sentinels
    log_probability: float = None


class Restorer:
    """A model, its tokenizer, its decoding settings and an optional lexicon: load once, restore many."""

    def __init__(self, model, tokenizer, decoding=None, lexicon=()):
        self.model = model
        self.tokenizer = tokenizer
        self.decoding = decoding or Decoding.of_model(model)
        self.table = None
        self.lexicon = {}  # {characters: {first token: [Candidate]}}, None key = every term
        terms = [term for term in dict.fromkeys(lexicon) if term.strip()]
        for term, tokens in zip(terms, self.span_tokens(terms)):
            if tokens and self.tokenizer.unk_token_id not in tokens:  # a term the vocabulary cannot spell
                for key in (len("".join(term.split())), None):
                    self.lexicon.setdefault(key, {}).setdefault(tokens[0], []).append(Candidate(term, tokens))

    @classmethod
    def load(cls, folder, device="auto", lexicon=(), **decoding):
        """From a model folder written by train.py (best/ or latest/), with its saved decoding settings."""
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForSeq2SeqLM.from_pretrained(folder, local_files_only=True, use_safetensors=True).to(device)
        return cls(model, tokenizer, Decoding.of_model(model, **decoding), lexicon)

    def span_tokens(self, texts):
        """Token ids of each text as a span, tokenized exactly as in the training targets."""
        if not texts:
            return []
        encoded = self.tokenizer(text_target=[sentinel(0) + text for text in texts], add_special_tokens=False)
        first = self.tokenizer.convert_tokens_to_ids(sentinel(0))
        return [ids[1:] if ids[:1] == [first] else ids for ids in encoded["input_ids"]]

    def restore(self, texts, marker="□", any_length=False, **options):
        """Restore texts where each run of `marker` is a lost span; returns one result dict per text."""
        return self.restore_documents([from_markers(text, marker, any_length) for text in texts], **options)

    def restore_documents(self, documents, alternatives=0, review_below=None):
        """One result per Document: {"inputs", "restored", "spans", "prediction"} ("spans" empty for plain ones)."""
        import torch

        model, decoding = self.model, self.decoding
        device = next(model.parameters()).device
        if self.table is None:
            self.table = TokenTable(self.tokenizer, model.get_output_embeddings().weight.shape[0]).to(device)
        chosen, plain_outputs = {}, {}  # id(Span) -> (Candidate or None, [alternatives]); index -> text
        windows = [window for document in documents if not document.plain and document.spans
                   for window in cut_windows(document, self.tokenizer, decoding)]
        plain = [index for index, document in enumerate(documents) if document.plain]
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                order = sorted(range(len(windows)), key=lambda index: len(windows[index].text))
                for start in range(0, len(order), decoding.batch_size):
                    batch = [windows[index] for index in order[start:start + decoding.batch_size]]
                    chosen.update(self.restore_windows(batch, alternatives, device))
                for start in range(0, len(plain), decoding.batch_size):
                    indices = plain[start:start + decoding.batch_size]
                    plain_outputs.update(zip(indices, self.generate_plain([documents[i].text for i in indices], device)))
        finally:
            model.train(was_training)
        return [self.result(index, document, chosen, plain_outputs, review_below)
                for index, document in enumerate(documents)]

    def generate_plain(self, texts, device):
        """Text-to-text inputs (no sentinels): free generation of the whole text, never truncated."""
        batch = self.tokenizer(texts, return_tensors="pt", padding=True).to(device)
        output = self.model.generate(**batch, max_new_tokens=self.decoding.max_new_tokens,
                                     num_beams=self.decoding.num_beams, do_sample=False)
        return [SPECIAL_TOKENS.sub("", self.tokenizer.decode(sequence, skip_special_tokens=True)).strip()
                for sequence in output]

    def restore_windows(self, windows, alternatives, device):
        """{id(Span): (chosen Candidate or None, [other Candidates])} for the spans of `windows`."""
        from transformers import LogitsProcessorList

        beams = self.decoding.num_beams
        batch = self.tokenizer([window.text for window in windows], return_tensors="pt", padding=True).to(device)
        lengths = [[span.length if self.decoding.length_aware else None for span in window.spans]
                   for window in windows]
        budget = self.decoding.max_new_tokens
        if all(length is not None for row in lengths for length in row):
            # Every span's length is known, so the constraint ends decoding within this many tokens
            # (a blank "▁" at most before each piece, a sentinel after each span, the first one and the end).
            budget = max(sum(2 * length + 1 for length in row) + 2 for row in lengths)
        output = self.model.generate(**batch, max_new_tokens=budget, num_beams=beams, num_return_sequences=beams,
                                     do_sample=False, logits_processor=LogitsProcessorList(
                                         [SpanConstraint(self.table, lengths, beams)]))
        sequences = output.tolist()
        best_sequences, requests = [], []  # requests: (window number, span number, Candidate)
        for number, window in enumerate(windows):
            hypotheses = [self.split_spans(sequences[number * beams + beam], len(window.spans)) for beam in range(beams)]
            best = hypotheses[0]
            best_sequences.append(best)
            for position, span in enumerate(window.spans):
                if any(best[k] is None for k in range(position)):
                    continue  # candidates are scored after the best hypothesis's earlier spans
                seen = {}
                for hypothesis in hypotheses:
                    tokens = hypothesis[position]
                    if tokens is not None:
                        text = self.span_text(tokens)
                        if text and text not in seen:
                            seen[text] = Candidate(text, tokens)
                requests += [(number, position, candidate) for candidate in seen.values()]
        self.score(batch, best_sequences, requests, device)
        lexicon_requests = self.lexicon_candidates(windows, batch, best_sequences, requests, alternatives, device)
        self.score(batch, best_sequences, lexicon_requests, device)
        by_span = {}
        for number, position, candidate in requests + lexicon_requests:
            known = by_span.setdefault((number, position), {}).get(candidate.text)
            if known is None or candidate.log_probability > known.log_probability:
                by_span[(number, position)][candidate.text] = candidate
        results = {}
        for number, window in enumerate(windows):
            for position, span in enumerate(window.spans):
                ranked = sorted(by_span.get((number, position), {}).values(), key=lambda c: -c.log_probability)
                results[id(span)] = (ranked[0] if ranked else None, ranked[1:1 + alternatives])
        return results

    def split_spans(self, sequence, count):
        """[tokens of span k, or None when span k was not closed by its sentinel] from one output sequence."""
        number = self.table.sentinel_number
        spans, current, tokens = [None] * count, None, []
        for token in sequence[1:]:
            k = int(number[token]) if token < len(number) else -1
            if k >= 0:
                if current is not None and k == current + 1 and current < count:
                    spans[current] = tokens
                current, tokens = k, []
            elif token == self.table.eos:
                break
            else:
                tokens.append(token)
        return spans

    def span_text(self, tokens):
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    def prefix(self, best, position):
        """Decoder tokens of the best hypothesis up to and including the sentinel that opens span `position`."""
        tokens = [self.model.config.decoder_start_token_id]
        for k in range(position):
            tokens += [int(self.table.sentinel_ids[k])] + best[k]
        return tokens + [int(self.table.sentinel_ids[position])]

    def teacher_forced_logits(self, batch, rows, sequences, device):
        """Logits for each decoder sequence (padded on the right) given its window's input."""
        import torch

        pad = self.model.config.pad_token_id
        width = max(map(len, sequences))
        decoder = torch.tensor([sequence + [pad] * (width - len(sequence)) for sequence in sequences], device=device)
        rows = torch.tensor(rows, device=device)
        return self.model(input_ids=batch["input_ids"][rows], attention_mask=batch["attention_mask"][rows],
                          decoder_input_ids=decoder).logits.float()

    def score(self, batch, best_sequences, requests, device):
        """Set each candidate's log-probability: its tokens and the closing sentinel, teacher-forced after
        the best hypothesis's earlier spans (softmax over the whole vocabulary, no length mask)."""
        import torch

        for start in range(0, len(requests), 64):
            chunk = requests[start:start + 64]
            sequences, begins = [], []
            for number, position, candidate in chunk:
                head = self.prefix(best_sequences[number], position)
                sequences.append(head + candidate.tokens + [int(self.table.sentinel_ids[position + 1])])
                begins.append(len(head))
            logits = self.teacher_forced_logits(batch, [number for number, _, _ in chunk],
                                                [sequence[:-1] for sequence in sequences], device)
            log_probs = torch.log_softmax(logits, dim=-1)
            for row, ((_, _, candidate), begin, sequence) in enumerate(zip(chunk, begins, sequences)):
                targets = torch.tensor(sequence[begin:], device=device)
                picked = log_probs[row, begin - 1:len(sequence) - 1].gather(-1, targets[:, None])
                candidate.log_probability = float(picked.sum())

    def lexicon_candidates(self, windows, batch, best_sequences, requests, alternatives, device):
        """Lexicon terms that fit each span and could matter. A term's probability is at most
        its first token's, so only terms whose first token is at least as likely as the best
        generated text are scored (they alone can win), plus the likeliest others for the
        alternatives; at most LEXICON_SCORED_PER_SPAN per span."""
        import torch

        if not self.lexicon:
            return []
        generated = {}
        for number, position, candidate in requests:
            key = (number, position)
            generated[key] = max(generated.get(key, -math.inf), candidate.log_probability)
        found = []
        for number, window in enumerate(windows):
            best = best_sequences[number]
            for position, span in enumerate(window.spans):
                terms = self.lexicon.get(span.length if self.decoding.length_aware else None, {})
                if terms and all(best[k] is not None for k in range(position)):
                    found.append((number, position, terms))
        chosen = []
        for start in range(0, len(found), 64):
            chunk = found[start:start + 64]
            heads = [self.prefix(best_sequences[number], position) for number, position, _ in chunk]
            logits = self.teacher_forced_logits(batch, [number for number, _, _ in chunk], heads, device)
            for row, ((number, position, terms), head) in enumerate(zip(chunk, heads)):
                first = torch.log_softmax(logits[row, len(head) - 1], dim=-1)
                tokens = list(terms)
                ranked = sorted(zip(first[torch.tensor(tokens, device=device)].tolist(), tokens), reverse=True)
                threshold = generated.get((number, position), -math.inf)
                picked = [token for bound, token in ranked if bound >= threshold]
                picked += [token for bound, token in ranked if bound < threshold][:alternatives]
                candidates = [candidate for token in picked for candidate in terms[token]][:LEXICON_SCORED_PER_SPAN]
                chosen += [(number, position, Candidate(candidate.text, candidate.tokens)) for candidate in candidates]
        return chosen

    def result(self, index, document, chosen, plain_outputs, review_below):
        if document.plain:
            text = plain_outputs[index]
            return {"inputs": document.text, "restored": text, "spans": [], "prediction": text}
        pieces, spans = [], []
        for part in document.parts:
            if not isinstance(part, Span):
                pieces.append(part)
                continue
            candidate, others = chosen.get(id(part), (None, []))
            if candidate is None:  # never hidden: the original marker stays, and the span is counted
                pieces.append(part.marker)
                spans.append({"text": "", "confidence": None, "alternatives": [], "review": False})
                continue
            confidence = math.exp(candidate.log_probability)
            review = review_below is not None and confidence < review_below
            pieces.append(REVIEW_MARKS[0] + candidate.text + REVIEW_MARKS[1] if review else candidate.text)
            spans.append({"text": candidate.text, "confidence": float(f"{confidence:.4g}"), "review": review,
                          "alternatives": [{"text": other.text, "confidence": float(f"{math.exp(other.log_probability):.4g}")}
                                           for other in others]})
        return {"inputs": document.text, "restored": "".join(pieces), "spans": spans,
                "prediction": build_targets([span["text"] for span in spans]) if spans else ""}
