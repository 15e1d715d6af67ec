"""T5 span-corruption text: parse sentinel sequences, fill spans back in, score restorations.

Shared by prepare.py (which writes the format), train.py (which scores during evaluation) and
restore.py (which applies a trained model), so the three always agree.

Format: each `<extra_id_k>` in the inputs marks a removed span; the targets list the spans in
order, each after its sentinel, optionally closed by the next sentinel:
    inputs  "患者出现<extra_id_0>症状，给予<extra_id_1>治疗。"
    targets "<extra_id_0>胸痛<extra_id_1>溶栓<extra_id_2>"
"""

import re
import unicodedata

SENTINEL = re.compile(r"<extra_id_(\d+)>")
RESTORATION_METRICS = ("eval_span_accuracy", "eval_char_accuracy", "eval_exact_match")  # as logged in evaluation
MAX_SENTINELS = 100  # T5 and mT5 tokenizers define <extra_id_0> ... <extra_id_99>
MAX_SPANS = MAX_SENTINELS - 1  # spans of one example: the targets' closing sentinel needs a number too
SPECIAL_TOKENS = re.compile(r"<pad>|</s>")
SENTENCE_END = re.compile(r"[。！？!?；;\n]|\.(?=\s|$)")  # where prepare.py cuts examples and restoration cuts windows


def sentinel(index):
    return f"<extra_id_{index}>"


def has_sentinels(text):
    return SENTINEL.search(text) is not None


def parse_spans(text):
    """{sentinel index: span text} from a target or a generated sequence.

    Text before the first sentinel is ignored; a repeated sentinel keeps its first span.
    """
    text = SPECIAL_TOKENS.sub("", text)
    spans = {}
    pieces = SENTINEL.split(text)  # [before, index, span, index, span, ...]
    for position in range(1, len(pieces), 2):
        spans.setdefault(int(pieces[position]), pieces[position + 1].strip())
    return spans


def fill_spans(inputs, spans):
    """The inputs with every sentinel replaced by its span ("" where the span is missing)."""
    return SENTINEL.sub(lambda match: spans.get(int(match.group(1)), ""), inputs)


def build_targets(span_texts):
    """Targets for a list of spans, closed by the next sentinel as in T5 pre-training."""
    return "".join(sentinel(index) + text for index, text in enumerate(span_texts)) + sentinel(len(span_texts))


def normalize(text):
    """NFKC (full-width forms, compatibility characters) and no whitespace at all."""
    return "".join(unicodedata.normalize("NFKC", text).split())


def levenshtein(first, second):
    """Edit distance (insertions, deletions, substitutions), two-row dynamic programming."""
    if len(first) < len(second):
        first, second = second, first
    previous = list(range(len(second) + 1))
    for row, char_a in enumerate(first, start=1):
        current = [row]
        for column, char_b in enumerate(second, start=1):
            current.append(min(previous[column] + 1, current[column - 1] + 1,
                               previous[column - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def target_and_predicted_spans(prediction, target):
    """Pairs (target span, predicted span), normalized; whole sequences when the target has no sentinels."""
    if not has_sentinels(target):
        return [(normalize(target), normalize(SPECIAL_TOKENS.sub("", prediction)))]
    targets, predicted = parse_spans(target), parse_spans(prediction)
    pairs = [(normalize(text), normalize(predicted.get(index, ""))) for index, text in sorted(targets.items())]
    return [(want, got) for want, got in pairs if want]


def restoration_metrics(predictions, targets):
    """span_accuracy, char_accuracy and exact_match of generated sequences against their targets.

    span_accuracy: restored spans equal to their target / target spans with non-empty text.
    char_accuracy: 1 - (sum of edit distances) / (sum of target span lengths), floored at 0.
    exact_match:   examples whose every span is restored exactly / examples.
    Predicted spans beyond the target's sentinels are not scored. Texts are compared after
    NFKC normalization with all whitespace removed.
    """
    spans = correct = characters = distance = exact = 0
    for prediction, target in zip(predictions, targets, strict=True):
        pairs = target_and_predicted_spans(prediction, target)
        matches = sum(want == got for want, got in pairs)
        spans += len(pairs)
        correct += matches
        characters += sum(len(want) for want, _ in pairs)
        distance += sum(levenshtein(want, got) for want, got in pairs)
        exact += matches == len(pairs)
    examples = len(targets)
    return {
        "span_accuracy": correct / spans if spans else 0.0,
        "char_accuracy": max(0.0, 1 - distance / characters) if characters else 0.0,
        "exact_match": exact / examples if examples else 0.0,
    }


def example_text(inputs, targets):
    """The text an example stands for: its inputs with the spans filled in, or the targets of a
    text-to-text pair."""
    return fill_spans(inputs, parse_spans(targets)) if SENTINEL.search(inputs) else targets
