"""Confidence that means what it says: of the spans shown with confidence 0.8, about 8 in 10 should
be right. Measured as the expected calibration error (ECE) over spans whose true text is known, and
corrected by a map fitted on validation (Platt, 1999): the span's probability p is shown as

    sigmoid(logit(p) / temperature + shift)

A temperature alone (Guo et al., 2017) only stretches or squeezes confidence around 0.5; it cannot
lift a model that is under-confident everywhere, which is what span probabilities are when the
length of the gap is known: the probability is the model's over every length, while the choice is
made among texts of the right length (measured on the demo: `python bench.py --only calibration`).
The shift can. The map is increasing, so the ranking of candidates, and every restoration, stays the
model's own: only the number shown changes.

Fitted at every evaluation in training (saved with that evaluation's best/ and latest/ in
generation_config.json as `confidence_temperature` and `confidence_shift`) and by
`restore.py --calibrate`.
"""

import math
import os

from domainfocus.spans import normalize, parse_spans

BINS = 10  # equal-width confidence bins of the ECE and the reliability diagram
MIN_SPANS = 30  # fewer graded spans than this fit nothing: the model's own probability is shown
# A pull towards the model's own probability, worth about one span: where confidence separates right
# from wrong perfectly, the best fit would otherwise be an infinitely steep step.
PULL = 1.0
# The fitted values are kept within these bounds, so that a small or odd validation set cannot make
# every confidence 0 or 1.
TEMPERATURES = (0.125, 8.0)
SHIFTS = (-8.0, 8.0)


def calibrated(probability, temperature=1.0, shift=0.0):
    """The confidence shown for a span the model gives `probability`."""
    if temperature == 1.0 and shift == 0.0:
        return probability
    return sigmoid(logit(probability) / temperature + shift)


def logit(probability):
    probability = min(max(probability, 1e-12), 1 - 1e-12)
    return math.log(probability / (1 - probability))


def sigmoid(value):
    return 1 / (1 + math.exp(-value)) if value >= 0 else math.exp(value) / (1 + math.exp(value))


def graded_spans(restorer, documents, targets):
    """Restore `documents` and grade each span against `targets` (sentinel format): (results,
    [(the model's own probability, unrounded, right?)]) for every restored span whose target is
    not empty. Spans left marked show no confidence and are not graded."""
    results = restorer.restore_documents(documents)
    return results, [(restorer.probabilities[id(span)], right) for span, _, right in graded(documents, results, targets)]


def shown_pairs(documents, results, targets):
    """[(confidence shown, right?)] of restore's results: how far the confidence a reader sees holds."""
    return [(shown["confidence"], right) for _, shown, right in graded(documents, results, targets)]


def graded(documents, results, targets):
    """(Span, its result, right?) for every restored span of `results` whose target is not empty."""
    for document, result, target in zip(documents, results, targets, strict=True):
        wanted = parse_spans(target or "")
        for number, (span, shown) in enumerate(zip(document.spans, result["spans"])):
            want = normalize(wanted.get(number, ""))
            if shown["confidence"] is not None and want:
                yield span, shown, normalize(shown["text"]) == want


def reliability(pairs, bins=BINS):
    """[(bin's lower edge, spans, mean confidence, share right)] of (confidence, right?) pairs, non-empty bins."""
    grouped = [[] for _ in range(bins)]
    for confidence, right in pairs:
        grouped[min(int(confidence * bins), bins - 1)].append((confidence, right))
    return [(number / bins, len(group), sum(c for c, _ in group) / len(group), sum(r for _, r in group) / len(group))
            for number, group in enumerate(grouped) if group]


def calibration_error(pairs, bins=BINS):
    """ECE: the gap between mean confidence and share right in each bin, weighted by the bin's spans."""
    return sum(count * abs(mean - right) for _, count, mean, right in reliability(pairs, bins)) / len(pairs) \
        if pairs else 0.0


def recalibrated(pairs, temperature, shift):
    return [(calibrated(probability, temperature, shift), right) for probability, right in pairs]


def fit_problem(pairs):
    """Why `pairs` fit nothing, or None: too few, or nothing to tell right from wrong."""
    rights = [right for _, right in pairs]
    if len(pairs) < MIN_SPANS:
        return f"{len(pairs)} graded spans, fewer than the {MIN_SPANS} a fit needs"
    if all(rights) or not any(rights):
        return f"all {len(pairs)} graded spans are {'right' if all(rights) else 'wrong'}: nothing to tell apart"
    return None


def fit(pairs):
    """(temperature, shift) whose confidences best predict right and wrong on `pairs` (the model's
    probability, right?): the least log-loss (plus PULL), a logistic regression on logit(p), solved
    by Newton's method with a backtracking line search (two parameters: written out rather than
    pulling in a library). (1, 0), the model's own, when there are fewer than MIN_SPANS pairs, all right or all
    wrong, or the probability does not rise with being right (nothing an increasing map could show)."""
    if fit_problem(pairs):
        return 1.0, 0.0
    rights = [right for _, right in pairs]
    features = [logit(probability) for probability, _ in pairs]

    def loss(scale, shift):
        return sum(softplus(scale * feature + shift) - right * (scale * feature + shift)
                   for feature, right in zip(features, rights)) + PULL / 2 * ((scale - 1) ** 2 + shift ** 2)

    scale, shift, current = 1.0, 0.0, loss(1.0, 0.0)
    for _ in range(100):
        gradient, hessian = [PULL * (scale - 1), PULL * shift], [[PULL, 0.0], [0.0, PULL]]
        for feature, right in zip(features, rights):
            predicted = sigmoid(scale * feature + shift)
            error, weight = predicted - right, predicted * (1 - predicted)
            gradient[0] += error * feature
            gradient[1] += error
            hessian[0][0] += weight * feature * feature
            hessian[0][1] += weight * feature
            hessian[1][1] += weight
        determinant = hessian[0][0] * hessian[1][1] - hessian[0][1] ** 2
        step = ((hessian[1][1] * gradient[0] - hessian[0][1] * gradient[1]) / determinant,
                (hessian[0][0] * gradient[1] - hessian[0][1] * gradient[0]) / determinant)
        size = 1.0
        while size > 1e-6 and loss(scale - size * step[0], shift - size * step[1]) > current:
            size /= 2  # the full Newton step overshoots where p is near 0 or 1: go part of the way
        if size <= 1e-6:
            break
        scale, shift = scale - size * step[0], shift - size * step[1]
        previous, current = current, loss(scale, shift)
        if previous - current < 1e-10:
            break
    if not (scale > 0 and math.isfinite(shift)):  # not a finite increasing map: show the model's own
        return 1.0, 0.0
    temperature = min(max(1 / scale, TEMPERATURES[0]), TEMPERATURES[1])
    return round(temperature, 4), round(min(max(shift, SHIFTS[0]), SHIFTS[1]), 4)


def softplus(value):
    return value + math.log1p(math.exp(-value)) if value > 0 else math.log1p(math.exp(value))


def draw_reliability(path, pairs, temperature=1.0, shift=0.0, title="Span confidence"):
    """A reliability diagram (share right against mean confidence per bin, the model's own and
    calibrated, with the spans per bin) of `pairs` (the model's probability, right?) as a PNG at
    `path`, written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # file only: no display needed on servers or under nohup
    import matplotlib.pyplot as plt

    figure, (curve, counts) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, height_ratios=(3, 1),
                                           constrained_layout=True)
    curve.plot([0, 1], [0, 1], color="0.6", linestyle=":", label="perfectly calibrated")
    shown = [("model's own", pairs, "o", "-", -0.02)]
    if (temperature, shift) != (1.0, 0.0):
        shown.append((f"calibrated (T {temperature:g}, shift {shift:g})", recalibrated(pairs, temperature, shift),
                      "s", "--", 0.02))
    for label, values, marker, style, offset in shown:
        bins = reliability(values)
        curve.plot([mean for _, _, mean, _ in bins], [right for *_, right in bins], marker=marker, linestyle=style,
                   label=f"{label}: ECE {calibration_error(values):.3f}")
        counts.bar([low + 0.05 + offset for low, *_ in bins], [count for _, count, *_ in bins], width=0.04, label=label)
    curve.set_ylabel("share of spans right")
    curve.set_xlim(0, 1)
    curve.set_ylim(0, 1.02)
    curve.legend(loc="upper left", fontsize=8)
    curve.set_title(f"{title} ({len(pairs)} spans)")
    counts.set_xlabel("confidence shown")
    counts.set_ylabel("spans")
    temporary = f"{path}.tmp.png"
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)
    return path
