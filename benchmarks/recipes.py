"""The three training recipes of the benchmark, each run for a wall-clock budget in the process that
`python bench.py --recipe NAME` starts (common.recipe_in_child), and what is measured of them.

"tool" is train.py itself: its load_model_and_data and build_trainer, with train.py's collator,
callbacks, evaluation and LoRA wiring; only the constants differ (the demo's, inputs up to 512 and
targets up to 256 tokens, no scheduled evaluation or checkpoint, the budget instead of MAX_STEPS).
"original" and "plain" are the baselines, plain Seq2SeqTrainer runs built here. The measurements
reach all three the same way: a forward pre-hook on the model counts the real tokens and FLOPs of
every training forward pass, in the training process whatever prepares the batches, and a callback
keeps the time and stops training at the budget.
"""

import json
import os
import tempfile
import time

import torch
from transformers import TrainerCallback, set_seed

from benchmarks.common import peak_resident_mb
from domainfocus.damage import from_sentinels
from domainfocus.data import first_examples
from domainfocus.restoration import Decoding, Restorer
from domainfocus.spans import RESTORATION_METRICS, restoration_metrics
from domainfocus.trainer import choose_precision, training_arguments


def flop_counter(model):
    """Training FLOPs of one example from its real lengths (forward + backward = 6 x multiply-adds
    of the weights, plus attention scores), following REFERENCE.md's encoder-decoder formula. The
    Trainer's own floating_point_ops ignores target tokens, so it is not used."""
    config = model.config
    embedding = config.vocab_size * config.d_model
    encoder = sum(p.numel() for n, p in model.encoder.named_parameters() if "embed_tokens" not in n)
    decoder = sum(p.numel() for n, p in model.decoder.named_parameters() if "embed_tokens" not in n)
    inner = config.num_heads * config.d_kv
    decoder_layers = config.num_decoder_layers or config.num_layers

    def flops(source, target):
        weights = 6 * (encoder * source + (decoder + embedding) * target)
        attention = 12 * inner * (config.num_layers * source ** 2 + decoder_layers * (target ** 2 + source * target))
        return weights + attention

    return flops


class Measurement(TrainerCallback):
    """Real (non-padding) tokens and useful FLOPs of every training forward pass, the time after each
    forward-backward pass, and the budget: training stops at the first optimizer step after `budget`
    seconds. `ignored` is the label value the loss skips (-100, or the pad id of the original recipe)."""

    def __init__(self, budget, ignored):
        self.budget, self.ignored = budget, ignored
        self.real_tokens = self.flops = 0
        self.timeline = []  # (time, real tokens so far) after each forward-backward pass
        self.started = self.seconds = None
        self.count_flops = None

    def attach(self, trainer):
        """Count `trainer`'s forward passes and time its steps. The hook runs outside torch.compile's graph."""
        self.count_flops = flop_counter(trainer.model)
        trainer.model.register_forward_pre_hook(torch.compiler.disable(self.forward_seen), with_kwargs=True)
        trainer.add_callback(self)
        return self

    def forward_seen(self, module, args, kwargs):
        if not module.training or kwargs.get("labels") is None:  # evaluation and generation are not training
            return
        sources = kwargs["attention_mask"].sum(dim=1).tolist()
        targets = (kwargs["labels"] != self.ignored).sum(dim=1).tolist()
        self.real_tokens += sum(sources) + sum(targets)
        self.flops += sum(self.count_flops(s, t) for s, t in zip(sources, targets))

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_substep_end(self, args, state, control, **kwargs):
        self.timeline.append((time.perf_counter(), self.real_tokens))

    def on_step_end(self, args, state, control, **kwargs):
        self.on_substep_end(args, state, control)
        self.seconds = time.perf_counter() - self.started
        if self.seconds >= self.budget:
            control.should_training_stop = True


def tool_trainer(config, args, precision_flags, tool, callbacks):
    """train.py's own trainer for `config` (`tool`: the train.py module, `callbacks`: callbacks.py):
    (trainer, the validation file it evaluates). Its evaluations do all that train.py's do, in
    OUTPUT_DIR: metrics.jsonl, the curves, best/ when it improves."""
    from domainfocus.checkpoints import evaluation_facts

    tokenizer, model, datasets_by_split, counts, valid_file = tool.load_model_and_data(config, None, args,
                                                                                       precision_flags)
    evaluation = {"metric_for_best_model": args.metric_for_best_model, **evaluation_facts(config, valid_file)}
    interrupt = callbacks.GracefulInterrupt(tool.quit_now)  # not installed: Ctrl+C stops the benchmark as usual
    trainer = tool.build_trainer(config, args, tokenizer, model, datasets_by_split, counts, valid_file, interrupt,
                                 evaluation)[0]
    return trainer, valid_file


def baseline_trainer(recipe, config, args):
    """A plain Seq2SeqTrainer: "original" pads every example to the length limits and labels with the
    pad id; "plain" pads each batch, labels with -100. Both sample at random. (trainer, ignored label)."""
    import datasets
    from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer,
                              default_data_collator)
    from transformers.trainer_callback import PrinterCallback

    tokenizer = AutoTokenizer.from_pretrained(config["MODEL_NAME_OR_PATH"])
    model = AutoModelForSeq2SeqLM.from_pretrained(config["MODEL_NAME_OR_PATH"])
    padded = recipe == "original"

    def tokenize(batch):
        padding = "max_length" if padded else False
        inputs = tokenizer(batch["inputs"], max_length=config["MAX_INPUT_LENGTH"], truncation=True, padding=padding)
        labels = tokenizer(text_target=batch["targets"], max_length=config["MAX_TARGET_LENGTH"], truncation=True,
                           padding=padding)
        return {**inputs, "labels": labels["input_ids"]}

    raw = datasets.load_dataset("json", data_files={"train": config["TRAIN_FILE"], "validation": config["VALID_FILE"]})
    data = {split: part.map(tokenize, batched=True, remove_columns=part.column_names) for split, part in raw.items()}
    collator = default_data_collator if padded else DataCollatorForSeq2Seq(tokenizer, model=model)
    args.train_sampling_strategy = "random"
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                             processing_class=tokenizer, data_collator=collator)
    trainer.remove_callback(PrinterCallback)
    return trainer, tokenizer.pad_token_id if padded else -100


def run_recipe(tool, callbacks, recipe, model_folder, train_file, valid_file, budget, output_dir, settings=None,
               evaluate=False, shuffle_batches=True):
    """Train one recipe for `budget` seconds in this process; returns its measurements. `tool` and
    `callbacks` are the train.py and callbacks.py modules, which bench.py hands over.

    `settings` changes train.py constants of this tool's recipe (the speed knobs, the masking);
    with it, the run only trains: its measurements are throughput, not restoration, unless
    `evaluate` asks for this tool's own evaluation of the whole validation file at the end.
    `shuffle_batches=False` keeps the length-grouped batches in the order transformers gives them."""
    config = {**tool.default_config(), **tool.DEMO, "MODEL_NAME_OR_PATH": model_folder, "TRAIN_FILE": train_file,
              "VALID_FILE": valid_file, "OUTPUT_DIR": output_dir, "MAX_INPUT_LENGTH": 512, "MAX_TARGET_LENGTH": 256}
    if recipe != "tool":
        config["OPTIMIZER"] = "adamw_torch"
    config.update(settings or {})
    set_seed(config["SEED"])
    precision_flags = choose_precision(config["PRECISION"])
    args = training_arguments(config, precision_flags)
    args.eval_strategy = args.save_strategy = "no"  # evaluation is timed separately below
    args.eval_steps = args.save_steps = None
    args.max_steps = 10 ** 6  # the budget stops training
    if recipe == "tool":
        trainer, valid_file = tool_trainer(config, args, precision_flags, tool, callbacks)
        trainer.shuffle_batches, ignored = shuffle_batches, -100
    else:
        trainer, ignored = baseline_trainer(recipe, config, args)
    validation = first_examples(valid_file, "inputs", "targets", 10 ** 9)
    measured = Measurement(budget, ignored).attach(trainer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    steps = trainer.state.global_step
    throughput = {"seconds": measured.seconds, "steps": steps, "real_tokens": measured.real_tokens,
                  "epochs": trainer.state.epoch, "first_step_seconds": measured.timeline[0][0] - measured.started,
                  "timeline": measured.timeline}
    if evaluate:
        return {**throughput, **full_evaluation(trainer, validation, output_dir)}
    if settings is not None:
        return throughput
    return {"recipe": recipe, **throughput, "flops": measured.flops,
            **recipe_evaluation(recipe, trainer, validation, tool.GEN_EVAL_SAMPLES)}


def peak_mb():
    """Peak memory: torch's allocations on a GPU, else this process's resident peak."""
    return torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else peak_resident_mb()


def full_evaluation(trainer, validation, output_dir):
    """This tool's evaluation (its decoding, as restore.py would) of every validation example, and one
    checkpoint written to weigh it."""
    trainer.generation_examples = validation
    metrics = trainer.evaluate()
    trainer._save_checkpoint(trainer.model, None)
    checkpoint = os.path.join(output_dir, f"checkpoint-{trainer.state.global_step}")
    return {**{name[5:]: value for name, value in metrics.items() if name in ("eval_loss", *RESTORATION_METRICS)},
            "eval_loss": metrics["eval_loss"], "peak_mb": peak_mb(),
            "trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "checkpoint_mb": sum(os.path.getsize(os.path.join(checkpoint, name)) for name in os.listdir(checkpoint)) / 1e6}


def recipe_evaluation(recipe, trainer, validation, default_samples):
    """One evaluation in the recipe's own style, timed (the baselines generate for the whole validation
    set; this tool restores GEN_EVAL_SAMPLES, timed again at the default, `default_samples`), and the same greedy,
    free-length restoration of the first 100 validation examples for every recipe."""
    model, tokenizer = trainer.model, trainer.processing_class
    started = time.perf_counter()
    eval_loss = trainer.evaluate()["eval_loss"]
    if recipe != "tool":
        baseline_generate(model, tokenizer, [inputs for inputs, _ in validation])
    evaluation_seconds = time.perf_counter() - started
    default_evaluation_seconds = None
    if recipe == "tool":
        trainer.generation_examples = validation[:default_samples]
        started = time.perf_counter()
        trainer.evaluate()
        default_evaluation_seconds = time.perf_counter() - started
    greedy = Restorer(model, tokenizer, Decoding(num_beams=1, length_aware=False, max_new_tokens=64))
    results = greedy.restore_documents([from_sentinels(inputs) for inputs, _ in validation[:100]])
    scores = restoration_metrics([result["prediction"] for result in results], [t for _, t in validation[:100]])
    return {"evaluation_seconds": evaluation_seconds, "default_evaluation_seconds": default_evaluation_seconds,
            "eval_loss": eval_loss, **scores, "peak_mb": peak_mb()}


def baseline_generate(model, tokenizer, texts, batch_size=64):
    """The baselines' own evaluation: plain greedy generation, inputs cut at 512 tokens."""
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                              max_length=512)
            model.generate(**batch, max_new_tokens=64, num_beams=1, do_sample=False)


def run_child(options):
    """bench.py's hidden --recipe mode: one recipe in this process, its measurements written to --out."""
    with tempfile.TemporaryDirectory() as folder:
        result = run_recipe(options.train, options.callbacks, options.recipe, options.model, options.train_file, options.valid_file, options.budget,
                            folder, options.settings, options.evaluate,
                            shuffle_batches=options.batch_order != "transformers")
    with open(options.out, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
