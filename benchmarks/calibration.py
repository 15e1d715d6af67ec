"""Does the confidence shown mean what it says? The calibration error of a trained model's span
confidence on held-out validation, before and after maps fitted on the other half: a temperature on
the token logits, a temperature on the span's probability, and the temperature with a shift that
the tool uses."""

import math
import os
import shutil

from benchmarks.common import HERE, print_table
from benchmarks.decoding import trained_demo_model

TOKEN_TEMPERATURES = tuple(0.25 * 2 ** (step / 2) for step in range(11))  # 0.25 to 8, each √2 above the last


def bench_calibration(options, folder, examples=400):
    """Fit on one half of the validation examples (split by a digest of the text, so that the halves
    share no text), measure on the other; draw the held-out half's reliability diagram."""
    from domainfocus.calibration import calibration_error, draw_reliability, fit, graded_spans, recalibrated
    from domainfocus.damage import from_sentinels, target_lengths
    from domainfocus.data import first_examples
    from domainfocus.masking import digest
    from domainfocus.restoration import Restorer

    print()
    model_folder = options.model or trained_demo_model(folder)
    restorer = Restorer.load(model_folder, device="cpu")
    halves = {"fit": [], "held out": []}
    for inputs, targets in first_examples(options.valid_file, "inputs", "targets", examples):
        halves["fit" if digest(inputs) % 2 else "held out"].append((inputs, targets))
    pairs, documents = {}, {}
    for name, part in halves.items():
        documents[name] = ([from_sentinels(inputs, target_lengths(targets)) for inputs, targets in part],
                           [targets for _, targets in part])
        pairs[name] = graded_spans(restorer, *documents[name])[1]
    token_temperature = min(TOKEN_TEMPERATURES, key=lambda t: log_loss(token_temperature_pairs(
        restorer, *documents["fit"], t)))
    span_temperature = min((0.125 * 2 ** (step / 8) for step in range(49)), key=lambda t: log_loss(
        recalibrated(pairs["fit"], t, 0.0)))
    temperature, shift = fit(pairs["fit"])
    held = pairs["held out"]
    maps = [("the model's own probability", held),
            (f"temperature {token_temperature:.3g} on the token logits",
             token_temperature_pairs(restorer, *documents["held out"], token_temperature)),
            (f"temperature {span_temperature:.3g} on the span's probability", recalibrated(held, span_temperature, 0.0)),
            (f"temperature {temperature:g} and shift {shift:g} (the tool's)", recalibrated(held, temperature, shift))]
    print(f"Span confidence of {model_folder} ({restorer.decoding.num_beams} beams, length-aware) on "
          f"{options.valid_file}: {len(halves['fit'])} examples ({len(pairs['fit'])} spans) to fit each map, "
          f"{len(halves['held out'])} others ({len(held)} spans, {sum(r for _, r in held) / len(held):.3f} right) "
          f"to measure it; halves split by text digest:\n")
    print_table(["confidence shown", "ECE, held out", "log-loss per span, held out"],
                [(name, f"{calibration_error(values):.3f}", f"{log_loss(values) / len(values):.3f}")
                 for name, values in maps])
    picture = draw_reliability(os.path.join(folder, "reliability.png"), held, temperature, shift,
                               "Demo model, held-out half")
    kept = os.path.join(HERE, "docs", "reliability-demo.png")
    shutil.copyfile(picture, kept)
    print(f"\nReliability diagram of the held-out half: {kept}")


def token_temperature_pairs(restorer, documents, targets, temperature):
    """graded_spans' pairs with every logit of the model divided by `temperature` (a hook on the LM
    head): what a temperature on the token logits (Guo et al.) shows, choices included."""
    from domainfocus.calibration import graded_spans

    hook = restorer.model.get_output_embeddings().register_forward_hook(lambda module, inputs, output:
                                                                        output / temperature)
    try:
        return graded_spans(restorer, documents, targets)[1]
    finally:
        hook.remove()


def log_loss(pairs):
    return -sum(math.log(min(max(c if right else 1 - c, 1e-12), 1.0)) for c, right in pairs)
