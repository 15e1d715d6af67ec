"""Restoration: a damaged text in, restored text out, every lost span accounted for.

One definition of decoding, shared by evaluation during training (domainfocus/trainer.py) and restore.py,
so that best/ restores exactly as it was evaluated. Use it from Python:

    from domainfocus.restoration import Restorer
    restorer = Restorer.load("runs/demo/best")               # once
    results = restorer.restore(["予阿□□□□治疗。"])          # any number of texts, any length

Each result is {"inputs", "restored", "spans": [{"text", "confidence", "review", ["reason"], "alternatives",
"length", "input_start", "input_end", "start", "end"}], "prediction"} ("prediction": the spans in
sentinel format, what the metrics score; inputs[input_start:input_end] is the span's marker,
restored[start:end] its text, or the marker kept when it was not restored); a text-to-text input
has no spans, and "review" and "reason" of its own when its rewrite was cut short.

What it guarantees:
* Every lost span appears in the result, in order. A span the model did not finish (nothing
  generated, token budget spent, no token fits) keeps its original marker in `restored`, with
  text "" and confidence None. The undamaged text is copied character for character.
* Length-aware: a span whose length is known (one marker per lost character) is restored with
  exactly that many characters, counted as lengths.py says (`38.5℃` fills five), by masking the
  logits during decoding (constraint.py). A span whose restoration holds a character the
  vocabulary cannot write (<unk>) shows a marker for it and is flagged for review.
* Long texts are cut into windows of whole sentences about the size of the training examples,
  with undamaged context on both sides (windows.py). Nothing is truncated; each span is restored once.
* Spans are chosen in order: candidates for span k (every beam's text for it, and the lexicon
  terms that can win) are scored after the restorations chosen for spans 0..k-1. Confidence of a
  span = the model's probability of its tokens followed by the closing sentinel, given the input
  and those earlier restorations (product of softmax probabilities, without the length mask),
  shown through the calibration fitted on validation (calibration.py), which never changes the choice.
* With a lexicon, the choice is exact at any lexicon size: a best-first search over the terms'
  tokens scores every term whose probability can still beat the candidates found so far.
"""

import bisect
import dataclasses
import heapq
import itertools
import math

from domainfocus.calibration import calibrated
from domainfocus.constraint import SpanConstraint, TokenTable
from domainfocus.damage import Span, from_markers
from domainfocus.lengths import (
    UNKNOWN,
    foldable,
    reachable_counts,
    shown,
    source_length,
)
from domainfocus.prefixes import DecoderPrefixes, beam_cache
from domainfocus.spans import SPECIAL_TOKENS, build_targets, sentinel
from domainfocus.windows import Cutter, cut_windows, plain_pieces, span_target_tokens

REVIEW_MARKS = ("⟦", "⟧")  # around a restoration flagged for review in `restored`
LEXICON_NODES_PER_SPAN = 4096  # safety valve of the exact lexicon search; a span that reaches it is counted
NODES_PER_ROUND = 8  # lexicon prefixes expanded per span in one batched forward pass, at least
ROWS_PER_ROUND = 64  # and more per span while few spans are still searching, up to about this many rows a pass


@dataclasses.dataclass
class Decoding:
    """How a trained model restores text. Saved with the model in generation_config.json."""

    num_beams: int = 1
    length_aware: bool = True  # known span lengths constrain decoding
    max_input_length: int = 512  # tokens per window, at most
    max_new_tokens: int = 256  # tokens generated per window
    whole_tokens: int = None  # a document up to this many tokens is one window (the longest training input)
    window_tokens: int = None  # tokens per window when a longer one is cut (an average training input)
    # A prior on lexicon terms: added to a term's log-probability when candidates are ranked (0: the model
    # alone decides). The confidence shown is the model's probability, never the boosted score; chosen on validation
    # (restore.py --tune-lexicon-bonus) and saved with the model.
    lexicon_bonus: float = 0.0
    # How the model's probability of a span is shown, fitted on validation so that of the spans shown
    # with confidence 0.8 about 8 in 10 are right (calibration.py): sigmoid(logit(p) / temperature + shift).
    # It never changes which text is chosen. 1 and 0: the model's own probability.
    confidence_temperature: float = 1.0
    confidence_shift: float = 0.0
    batch_size: int = 16

    SAVED = ("num_beams", "length_aware", "max_input_length", "max_new_tokens", "whole_tokens", "window_tokens",
             "lexicon_bonus", "confidence_temperature", "confidence_shift")

    @classmethod
    def of_model(cls, model, **overrides):
        """The settings saved with `model` (defaults where it has none), then `overrides` that are not None."""
        saved = model.generation_config
        values = {name: getattr(saved, name) for name in cls.SAVED if getattr(saved, name, None) is not None}
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)

    def shown(self, probability):
        """The confidence shown for a span the model gives `probability`."""
        return calibrated(probability, self.confidence_temperature, self.confidence_shift)

    def save_to(self, model):
        """Make `model.save_pretrained` write these settings into generation_config.json."""
        for name in self.SAVED:
            setattr(model.generation_config, name, getattr(self, name))
        # A generation config derived from the model config drops unknown keys when it is loaded
        # again (transformers 5); marked as a config of its own, it keeps length_aware and max_input_length.
        model.generation_config._from_model_config = False


@dataclasses.dataclass
class Candidate:
    tokens: tuple  # token ids of the span, without sentinels
    log_probability: float = None
    terms: list = dataclasses.field(default_factory=list)  # lexicon terms written with exactly these tokens


class TermNode:
    """A node of the lexicon's token trie: the terms whose tokens end here, and the next tokens."""

    def __init__(self):
        self.children = {}
        self.terms = []


def single_child_chain(node):
    """[(token, node)] from `node` (its token None) down through nodes with exactly one child."""
    chain = [(None, node)]
    while len(chain[-1][1].children) == 1:
        chain.append(next(iter(chain[-1][1].children.items())))
    return chain


class Restorer:
    """A model, its tokenizer, its decoding settings and an optional lexicon: load once, restore many."""

    def __init__(self, model, tokenizer, decoding=None, lexicon=()):
        self.model = model
        self.tokenizer = tokenizer
        self.decoding = decoding or Decoding.of_model(model)
        self.table = None
        self.lexicon = {}  # source length (None: any length) -> TermNode, the root of that length's trie
        self.searches_cut = 0  # spans whose lexicon search reached LEXICON_NODES_PER_SPAN
        self.unproven = set()  # id(Span) of those in the current call: flagged for review
        self.overruled = {}  # id(Span) -> the likelier text a lexicon bonus ranked below the chosen term
        self.probabilities = {}  # id(Span) -> the model's probability of its restoration, before calibration
        terms = [term for term in dict.fromkeys(lexicon) if term.strip()]
        for term, tokens in zip(terms, self.span_tokens(terms)):
            for key in ((source_length(term), None) if tokens else ()):
                node = self.lexicon.setdefault(key, TermNode())
                for token in tokens:
                    node = node.children.setdefault(token, TermNode())
                node.terms.append(term)

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
        chosen, plain_outputs = {}, {}  # id(Span) -> (Candidate or None, [alternatives]); index -> (text, cut)
        self.unproven, self.overruled, self.probabilities = set(), {}, {}
        windows = [window for document in documents if not document.plain and document.spans
                   for window in cut_windows(document, self.tokenizer, decoding)]
        pieces = [(index, piece) for index, document in enumerate(documents) if document.plain
                  for piece in plain_pieces(document.text, Cutter(self.tokenizer, decoding))]
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                # Beam search steps until the longest output of its batch ends: windows that write about
                # as much go together (then by input size), so that few rows decode on idly.
                order = sorted(range(len(windows)), key=lambda index: (self.planned_tokens(windows[index]),
                                                                       len(windows[index].text)))
                for start in range(0, len(order), decoding.batch_size):
                    batch = [windows[index] for index in order[start:start + decoding.batch_size]]
                    chosen.update(self.restore_windows(batch, alternatives, device))
                for start in range(0, len(pieces), decoding.batch_size):
                    chunk = pieces[start:start + decoding.batch_size]
                    outputs = self.generate_plain([text for _, (_, text) in chunk], device)
                    for (index, (before, _)), (output, cut) in zip(chunk, outputs):
                        known = plain_outputs.get(index, ("", False))
                        plain_outputs[index] = (known[0] + (before if known[0] else "") + output, known[1] or cut)
        finally:
            model.train(was_training)
            self.prefixes = None  # the last batch's keys and values: not kept on the device between calls
        return [self.result(index, document, chosen, plain_outputs, review_below)
                for index, document in enumerate(documents)]

    # --- text-to-text inputs --------------------------------------------------------------------

    def generate_plain(self, texts, device):
        """Free generation of whole texts: [(output, cut)], `cut` when the budget ended it before </s>."""
        batch = self.tokenizer(texts, return_tensors="pt", padding=True).to(device)
        output = self.model.generate(**batch, max_new_tokens=self.decoding.max_new_tokens,
                                     num_beams=self.decoding.num_beams, do_sample=False)
        eos = self.tokenizer.eos_token_id
        return [(SPECIAL_TOKENS.sub("", self.tokenizer.decode(sequence, skip_special_tokens=True)).strip(),
                 eos not in sequence.tolist()) for sequence in output]

    # --- windows with spans ---------------------------------------------------------------------

    def restore_windows(self, windows, alternatives, device):
        """{id(Span): (chosen Candidate or None, [other Candidates])} for the spans of `windows`."""
        from transformers import LogitsProcessorList
        from transformers.modeling_outputs import BaseModelOutput

        beams = self.decoding.num_beams
        batch = self.tokenizer([window.text for window in windows], return_tensors="pt", padding=True).to(device)
        self.encoded = self.model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        self.attention_mask = batch["attention_mask"]
        self.prefixes = DecoderPrefixes(self.model, self.encoded.last_hidden_state, self.attention_mask)
        lengths = [[span.length if self.decoding.length_aware else None for span in window.spans] for window in windows]
        # generate() expands the encoder output it is given for the beams in place: it gets its own.
        output = self.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=self.encoded.last_hidden_state),
                                     attention_mask=self.attention_mask,
                                     max_new_tokens=self.budget(lengths), num_beams=beams,
                                     num_return_sequences=beams, do_sample=False, logits_processor=LogitsProcessorList(
                                         [SpanConstraint(self.table, lengths, beams)]),
                                     past_key_values=beam_cache(self.model))
        sequences = output.tolist()
        hypotheses = [[self.split_spans(sequences[number * beams + beam], len(window.spans)) for beam in range(beams)]
                      for number, window in enumerate(windows)]
        restored = [[None] * len(window.spans) for window in windows]  # tokens chosen for each span
        results = {}
        for position in range(max(len(window.spans) for window in windows)):
            active = [number for number, window in enumerate(windows) if position < len(window.spans)]
            missing = [number for number in active if all(spans[position] is None for spans in hypotheses[number])]
            for number in missing:  # no beam closed this span: decode on from the spans chosen before it
                hypotheses[number] = self.continue_from(number, lengths[number], restored[number], position)
            pools = {}
            for number in active:
                pools[number] = {}
                for spans in hypotheses[number]:
                    tokens = spans[position]
                    if tokens and self.table.text(tokens).strip():
                        pools[number].setdefault(tuple(tokens), Candidate(tuple(tokens)))
            heads = {number: self.prefix(restored[number], position) for number in active}
            self.score([(number, heads[number], position, candidate) for number in active
                        for candidate in pools[number].values()])
            if self.lexicon:
                searched = [(number, self.lexicon.get(windows[number].spans[position].length
                                                      if self.decoding.length_aware else None)) for number in active]
                cut = self.search_lexicon([(number, root) for number, root in searched if root], heads, position,
                                          pools, alternatives + 1)
                self.unproven.update(id(windows[number].spans[position]) for number in cut)
            for number in active:
                ranked = sorted(pools[number].values(), key=lambda candidate: -self.ranking(candidate))
                restored[number][position] = list(ranked[0].tokens) if ranked else None
                span = windows[number].spans[position]
                likeliest = max(ranked, key=lambda candidate: candidate.log_probability, default=None)
                if likeliest is not None and likeliest is not ranked[0]:
                    self.overruled[id(span)] = likeliest
                results[id(span)] = (ranked[0] if ranked else None, ranked[1:1 + alternatives])
        return results

    def planned_tokens(self, window):
        """About how many tokens decoding `window` writes: its sentinels and about one a lost character."""
        return sum(span_target_tokens(span, self.decoding.length_aware) for span in window.spans)

    def ranking(self, candidate):
        """What candidates are ranked by: the model's log-probability, plus the lexicon bonus for a term."""
        return candidate.log_probability + (self.decoding.lexicon_bonus if candidate.terms else 0.0)

    def budget(self, lengths):
        """Tokens to generate: with every length known, the constraint ends decoding within this many
        (a lost character is written in at most as many characters as the longest folded image, each
        piece has a blank "▁" at most before it; a sentinel after each span, the first one and the end)."""
        if all(length is not None for row in lengths for length in row):
            longest = max(map(len, foldable()))
            return max(sum(2 * longest * length + 1 for length in row) + 2 for row in lengths)
        return self.decoding.max_new_tokens

    def continue_from(self, number, lengths, restored, position):
        """Beam hypotheses of window `number` that start with the spans chosen before `position`."""
        import torch
        from transformers import LogitsProcessorList
        from transformers.modeling_outputs import BaseModelOutput

        beams = self.decoding.num_beams
        head = self.prefix(restored, position)
        output = self.model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=self.encoded.last_hidden_state[number:number + 1]),
            attention_mask=self.attention_mask[number:number + 1],
            decoder_input_ids=torch.tensor([head], device=self.attention_mask.device),
            max_new_tokens=self.budget([lengths[position:]]), num_beams=beams, num_return_sequences=beams,
            do_sample=False, logits_processor=LogitsProcessorList([SpanConstraint(self.table, [lengths], beams)]),
            past_key_values=beam_cache(self.model))
        return [self.split_spans(sequence, len(lengths)) for sequence in output.tolist()]

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

    def prefix(self, restored, position):
        """Decoder tokens up to and including the sentinel that opens span `position`, after the spans
        restored before it (an empty span where one could not be restored)."""
        tokens = [self.model.config.decoder_start_token_id]
        for k in range(position):
            tokens += [int(self.table.sentinel_ids[k])] + (restored[k] or [])
        return tokens + [int(self.table.sentinel_ids[position])]

    def score(self, requests):
        """Set each candidate's log-probability: its tokens and the closing sentinel, teacher-forced
        after `head` (softmax over the whole vocabulary, no length mask). Requests: (window, head,
        span position, Candidate)."""
        import torch

        targets = [list(candidate.tokens) + [int(self.table.sentinel_ids[position + 1])]
                   for _, _, position, candidate in requests]
        log_probabilities = self.prefixes.after([number for number, *_ in requests], [head for _, head, *_ in requests],
                                                [candidate.tokens for *_, candidate in requests], [0] * len(requests))
        for (_, _, _, candidate), log_probability, labels in zip(requests, log_probabilities, targets):
            picked = log_probability.gather(-1, torch.tensor(labels, device=log_probability.device)[:, None])
            candidate.log_probability = float(picked.sum())

    def search_lexicon(self, searches, heads, position, pools, keep):
        """Add to `pools` every lexicon term that can be among the `keep` likeliest candidates of its
        span. Best-first over each trie: a prefix's log-probability bounds every term below it
        (probabilities multiply and never exceed 1), so a prefix less likely than the `keep`-th best
        candidate found so far is never expanded, and every term that could rank above it is scored.
        Exact at any lexicon size; LEXICON_NODES_PER_SPAN bounds the work. With a lexicon bonus, every
        bound and rank is taken with it (a term below a prefix ranks at most the prefix's
        log-probability plus the bonus). Returns the windows whose search reached that bound.

        Each forward pass reads a popped prefix together with the chain of single children below it
        (below its first tokens a large lexicon's trie is mostly such chains): teacher forcing gives
        the next-token distribution at every position of the chain at once, so those nodes are
        expanded later without a pass of their own (best-first as before, with the same bounds, so the
        same terms win)."""
        import torch

        counter = itertools.count()
        state, cut = {}, set()
        bonus = self.decoding.lexicon_bonus
        closing = int(self.table.sentinel_ids[position + 1])
        read_ahead = {}  # (window, id(node)) -> what expanding the node needs, from an earlier pass
        for number, root in searches:
            # The ranks of the candidates found so far, negated and sorted: found[keep - 1] bounds.
            found = sorted(-self.ranking(candidate) for candidate in pools[number].values())
            state[number] = {"frontier": [(-0.0, next(counter), root, ())], "found": found, "expanded": 0}

        def threshold(number):
            found = state[number]["found"]
            return -found[keep - 1] if len(found) >= keep else -math.inf

        def expand(number, score, node, tokens, values):
            """Score the node's terms and queue its children that can still win; `values`: the
            log-probabilities after its tokens of the closing sentinel and of each child's token."""
            closing_value, child_values = values
            if node.terms:
                found, known = state[number]["found"], pools[number].get(tokens)
                if known is None:  # a text no beam wrote
                    known = pools[number][tokens] = Candidate(tokens, score + closing_value)
                else:  # a beam's text that is a term: it ranks anew, with the bonus
                    found.remove(-self.ranking(known))
                known.terms = list(dict.fromkeys(known.terms + node.terms))
                bisect.insort(found, -self.ranking(known))
            for (token, child), child_score in zip(node.children.items(), child_values):
                if score + child_score + bonus > threshold(number):
                    heapq.heappush(state[number]["frontier"], (-(score + child_score), next(counter), child,
                                                               tokens + (token,)))

        while True:
            popped = []
            searching = sum(bool(entry["frontier"]) and -entry["frontier"][0][0] + bonus > threshold(number)
                            for number, entry in state.items())
            quota = max(NODES_PER_ROUND, ROWS_PER_ROUND // max(searching, 1))
            for number, entry in state.items():
                frontier, taken = entry["frontier"], 0
                while frontier and -frontier[0][0] + bonus > threshold(number) and taken < quota:
                    if entry["expanded"] >= LEXICON_NODES_PER_SPAN:
                        self.searches_cut += 1
                        cut.add(number)
                        frontier.clear()
                        break
                    negative, _, node, tokens = heapq.heappop(frontier)
                    entry["expanded"] += 1
                    values = read_ahead.pop((number, id(node)), None)
                    if values is not None:
                        expand(number, -negative, node, tokens, values)
                    else:
                        popped.append((number, -negative, node, tokens))
                        taken += 1
            if not popped:
                return cut
            chains = [single_child_chain(node) for _, _, node, _ in popped]
            log_probabilities = self.prefixes.after(
                [number for number, *_ in popped], [heads[number] for number, *_ in popped],
                [tokens + tuple(token for token, _ in chain[1:]) for (_, _, _, tokens), chain in zip(popped, chains)],
                [len(tokens) for _, _, _, tokens in popped])
            for (number, score, node, tokens), chain, log_probability in zip(popped, chains, log_probabilities):
                closing_values = log_probability[:, closing].tolist()
                # Down the chain each node has one child, the next node's token; the last may have many.
                following = torch.tensor([token for token, _ in chain[1:]], device=log_probability.device)
                along = log_probability[:-1].gather(-1, following[:, None])[:, 0].tolist()
                last = log_probability[-1][list(chain[-1][1].children)].tolist() if chain[-1][1].children else []
                values = [(closing, [child]) for closing, child in zip(closing_values, along)]
                values.append((closing_values[-1], last))
                expand(number, score, node, tokens, values[0])
                for (_, chain_node), value in zip(chain[1:], values[1:]):
                    read_ahead[number, id(chain_node)] = value

    # --- results --------------------------------------------------------------------------------

    def display(self, candidate, span):
        """(the text a candidate restores for `span`, why it needs review or None)."""
        unknown = self.tokenizer.unk_token_id in candidate.tokens
        if candidate.terms:
            if len(candidate.terms) > 1:
                return candidate.terms[0], f"lexicon terms {' / '.join(candidate.terms[:3])} read the same to the model"
            if unknown:  # <unk> may stand for any characters: the lexicon's term is a guess the model cannot check
                return candidate.terms[0], "the lexicon supplies characters the model's vocabulary cannot write"
            return candidate.terms[0], None
        # The pieces as written (what the constraint counted), not decode(): a "</s>" spelled in pieces is text.
        text = self.table.text(candidate.tokens).strip()
        if not unknown:
            return shown(text, span.length), None
        reason = "the model's vocabulary cannot write some of its characters"
        return self.marked_unknown(text.split(UNKNOWN), span), reason

    @staticmethod
    def alternatives_shown(candidate, confidence, others):
        """The confidence shown for each alternative: the chosen one's shown confidence times the odds
        the model gives the alternative against it, scaled down where together they would pass 1.
        The calibration is fitted on the chosen texts only, so it is not applied to the others one by
        one (that would show three runners-up at 70% each); with the model's own confidence this is
        exactly the model's probability of each."""
        shown = [confidence * math.exp(other.log_probability - candidate.log_probability) for other in others]
        total = sum(shown)
        return [value * (1 - confidence) / total for value in shown] if confidence + total > 1 else shown

    @staticmethod
    def marked_unknown(pieces, span):
        """The text around <unk>s (`pieces`), each <unk> shown as markers: at least one each, and as many
        as the span's length leaves to them, the text around them folded as little as that allows
        (`38.5°C<unk>` for six lost characters: `38.5℃□`). Where the text alone is longer than the
        length allows, the whole span shows as markers."""
        unknown = len(pieces) - 1
        if span.length is None:
            return span.unit.join(pieces)
        readings = [sorted(reachable_counts(piece), reverse=True) for piece in pieces]
        counts = [reading[0] for reading in readings]  # as written, then folded one piece at a time
        for number, reading in enumerate(readings):
            for count in reading:
                if span.length - sum(counts) >= unknown:
                    break
                counts[number] = count
        left = span.length - sum(counts)
        if left < unknown:
            return span.unit * span.length
        markers = [left - (unknown - 1)] + [1] * (unknown - 1)
        texts = [shown(piece, count) for piece, count in zip(pieces, counts)]
        return texts[0] + "".join(span.unit * count + text for count, text in zip(markers, texts[1:]))

    def result(self, index, document, chosen, plain_outputs, review_below):
        if document.plain:
            text, cut = plain_outputs.get(index, ("", False))
            record = {"inputs": document.text, "restored": text, "spans": [], "prediction": text, "review": cut}
            if cut:
                record["reason"] = f"generation stopped at max_new_tokens={self.decoding.max_new_tokens}"
            return record
        pieces, spans = [], []
        read, written = 0, 0  # characters of `inputs` and of `restored` before the current part
        for part in document.parts:
            if not isinstance(part, Span):
                pieces.append(part)
                read, written = read + len(part), written + len(part)
                continue
            where = {"length": part.length, "input_start": read, "input_end": read + len(part.marker)}
            read += len(part.marker)
            candidate, others = chosen.get(id(part), (None, []))
            if candidate is None:  # never hidden: the original marker stays, and the span is counted
                pieces.append(part.marker)
                spans.append({"text": "", "confidence": None, "alternatives": [], "review": False, **where,
                              "start": written, "end": written + len(part.marker)})
                written += len(part.marker)
                continue
            text, reason = self.display(candidate, part)
            if reason is None and id(part) in self.unproven:
                reason = "the lexicon search stopped at its limit: a likelier term may exist"
            if reason is None and id(part) in self.overruled:
                reason = (f"chosen for being a lexicon term: the model finds "
                          f"{self.display(self.overruled[id(part)], part)[0]!r} likelier")
            self.probabilities[id(part)] = math.exp(candidate.log_probability)  # unrounded, for calibration
            confidence = self.decoding.shown(self.probabilities[id(part)])
            if reason is None and review_below is not None and confidence < review_below:
                reason = f"confidence below {review_below}"
            pieces.append(REVIEW_MARKS[0] + text + REVIEW_MARKS[1] if reason else text)
            start = written + (len(REVIEW_MARKS[0]) if reason else 0)
            written += len(pieces[-1])
            span = {"text": text, "confidence": float(f"{confidence:.4g}"), "review": reason is not None}
            if reason:
                span["reason"] = reason
            span["alternatives"] = [{"text": self.display(other, part)[0], "confidence": float(f"{shown:.4g}")}
                                    for other, shown in zip(others, self.alternatives_shown(candidate, confidence,
                                                                                            others))]
            span.update(where, start=start, end=start + len(text))
            spans.append(span)
        return {"inputs": document.text, "restored": "".join(pieces), "spans": spans,
                "prediction": build_targets([span["text"] for span in spans]) if spans else ""}

