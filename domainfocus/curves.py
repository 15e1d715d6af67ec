"""training_curves.png, drawn from metrics.jsonl (the single record of a run) at every evaluation;
`python train.py --plot OUTPUT_DIR` redraws it without training."""

import json
import math
import os

from domainfocus.spans import RESTORATION_METRICS


def read_metrics(path):
    """{key: {step: value}} from metrics.jsonl; for a step logged twice (a resumed run), the last wins."""
    series = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            for key, value in record.items():
                if key not in ("step", "epoch", "time") and isinstance(value, (int, float)):
                    series.setdefault(key, {})[record["step"]] = value
    return series


def best_step(series, metric, greater_is_better):
    finite = {step: value for step, value in series.get(metric, {}).items() if math.isfinite(value)}
    if not finite:
        return None
    pick = max if greater_is_better else min
    return pick(finite, key=lambda step: (finite[step], -step) if greater_is_better else (finite[step], step))


def plot_run(output_dir, early_stopping_start_step=None, metric="eval_loss"):
    """Draw training_curves.png for `output_dir`; returns its path. Written atomically."""
    import matplotlib.pyplot as plt

    figure = draw_curves(read_metrics(os.path.join(output_dir, "metrics.jsonl")), early_stopping_start_step, metric)
    figure.suptitle(f"DomainFocus training: {os.path.basename(os.path.abspath(output_dir))}")
    path = os.path.join(output_dir, "training_curves.png")
    figure.savefig(path + ".tmp.png", dpi=100)
    plt.close(figure)
    os.replace(path + ".tmp.png", path)
    return path


def draw_curves(series, early_stopping_start_step=None, metric="eval_loss"):
    """The figure of training_curves.png from {key: {step: value}}: losses, restoration metrics,
    learning rate. The x-axis spans the steps logged; an early-stopping start beyond them is
    written in the legend rather than drawn far to the right. The loss axis is logarithmic, so a
    first loss of 30 (from scratch) does not flatten the changes of 0.01 that matter later."""
    import matplotlib

    matplotlib.use("Agg")  # file only: no display needed on servers or under nohup
    import matplotlib.pyplot as plt

    restoration = [name for name in RESTORATION_METRICS if name in series]
    panels = 3 if restoration else 2
    figure, axes = plt.subplots(panels, 1, figsize=(9, 3.2 * panels), sharex=True, constrained_layout=True)
    loss_axis, rate_axis = axes[0], axes[-1]
    for key, label in (("loss", "training loss"), ("eval_loss", "evaluation loss")):
        if key in series:
            steps = sorted(series[key])
            loss_axis.plot(steps, [series[key][step] for step in steps], label=label,
                           marker="o" if key == "eval_loss" else None, markersize=3)
    losses = [value for key in ("loss", "eval_loss") for value in series.get(key, {}).values()]
    if losses and all(math.isfinite(value) and value > 0 for value in losses):
        loss_axis.set_yscale("log")
    loss_axis.set_ylabel("loss")
    if restoration:
        for key in restoration:
            steps = sorted(series[key])
            axes[1].plot(steps, [series[key][step] for step in steps], marker="o", markersize=3,
                         label=key[len("eval_"):].replace("_", " "))
        axes[1].set_ylabel("restoration (0-1)")
        axes[1].set_ylim(-0.02, 1.02)
    if "learning_rate" in series:
        steps = sorted(series["learning_rate"])
        rate_axis.plot(steps, [series["learning_rate"][step] for step in steps], color="gray",
                       label="learning rate")
    rate_axis.set_ylabel("learning rate")
    rate_axis.set_xlabel("optimizer step")
    logged = [step for values in series.values() for step in values]
    last = max(logged, default=0)
    best = best_step(series, metric, metric != "eval_loss")
    for axis in axes:
        if early_stopping_start_step and early_stopping_start_step <= last:
            axis.axvline(early_stopping_start_step, color="tab:red", linestyle="--", label="early stopping starts")
        elif early_stopping_start_step:
            axis.plot([], [], color="tab:red", linestyle="--",
                      label=f"early stopping starts at step {early_stopping_start_step} (not reached)")
        if best is not None:
            axis.axvline(best, color="tab:green", linestyle=":", label=f"best ({metric} at step {best})")
        axis.grid(alpha=0.3)
        axis.legend(loc="best", fontsize="small")
    if logged:
        first = min(logged)
        margin = max((last - first) * 0.02, 1)
        rate_axis.set_xlim(first - margin, last + margin)  # shared by every panel
    return figure
