"""The Trainer of train.py: its arguments from the constants, Seq2SeqTrainer plus restoration metrics, shuffled length-grouped batches
that a resume continues exactly, the NaN guard's hooks, the loss of a progress line kept across an
interrupt, and saves that fail in one line. Imported when training starts (transformers is slow to
import, and mistakes in the constants or data are reported before that).
"""

import logging
import os
import shutil

import torch
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_pt_utils import LengthGroupedSampler

from domainfocus.calibration import calibration_error, draw_reliability, fit, graded_spans, recalibrated
from domainfocus.checkpoints import SaveFailed, write_error
from domainfocus.damage import from_sentinels, target_lengths
from domainfocus.data import MaskedExamples
from domainfocus.restoration import Decoding, Restorer
from domainfocus.settings import ConfigError, metric_for_best_model
from domainfocus.sharding import (
    SHARDED_FOLDER,
    full_state_dict,
    full_weights,
    gradients_unsynced,
    is_sharded,
    load_shards,
    save_shards,
)
from domainfocus.spans import SENTINEL, restoration_metrics

logger = logging.getLogger("domainfocus")


def choose_precision(precision):
    """Map PRECISION to Trainer flags: bf16 where supported, fp16 only when asked, else fp32."""
    if precision == "fp16":
        if not torch.cuda.is_available():
            raise ConfigError("PRECISION='fp16' needs a CUDA GPU; use 'auto' or 'fp32'.")
        logger.warning("PRECISION='fp16': T5 and mT5 overflow in fp16 and the loss often turns NaN; prefer 'bf16'.")
        return {"fp16": True, "bf16": False}
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
        logger.info("PRECISION='auto' chose %s.", precision)
    return {"fp16": False, "bf16": precision == "bf16"}


def training_arguments(config, precision_flags):
    on_gpu = torch.cuda.is_available()
    return Seq2SeqTrainingArguments(
        output_dir=config["OUTPUT_DIR"],
        per_device_train_batch_size=config["PER_DEVICE_BATCH_SIZE"],
        per_device_eval_batch_size=config["PER_DEVICE_BATCH_SIZE"] * 2,
        gradient_accumulation_steps=config["GRADIENT_ACCUMULATION_STEPS"],
        optim={"adamw_8bit": "adamw_bnb_8bit"}.get(config["OPTIMIZER"], config["OPTIMIZER"]),
        learning_rate=config["LEARNING_RATE"],
        lr_scheduler_type=config["LR_SCHEDULER"],
        warmup_steps=config["WARMUP_STEPS"],
        num_train_epochs=config["NUM_EPOCHS"],
        max_steps=config["MAX_STEPS"],
        eval_strategy="steps",
        eval_steps=config["EVAL_STEPS"],
        save_strategy="steps",
        save_steps=config["SAVE_STEPS"],
        save_total_limit=config["SAVE_TOTAL_LIMIT"],
        logging_steps=config["LOGGING_STEPS"],
        metric_for_best_model=metric_for_best_model(config),
        greater_is_better=metric_for_best_model(config) != "eval_loss",
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        activation_checkpointing=config["GRADIENT_CHECKPOINTING"] and on_gpu,
        dataloader_num_workers=config["DATALOADER_WORKERS"],
        dataloader_pin_memory=on_gpu,
        torch_compile=config["TORCH_COMPILE"],
        # T5 accepts but ignores the token count that this option passes to it, so with it on, every
        # loss under torchrun came out multiplied by the number of processes (transformers 5.23).
        average_tokens_across_devices=False,
        ddp_find_unused_parameters=False,  # T5 uses every parameter in every step
        use_cpu=not on_gpu,  # also makes torchrun on a CPU-only machine run as several processes (gloo)
        seed=config["SEED"],
        report_to=["tensorboard"] if config["TENSORBOARD"] else "none",  # local files only, no telemetry
        disable_tqdm=True,  # SafeDetailedProgressCallback prints the progress
        logging_nan_inf_filter=False,  # a NaN loss must show, not be replaced by an average
        predict_with_generate=False,
        **precision_flags,
    )


def length_list(dataset):
    """The "length" column as a plain list, read as one numpy column (see _get_train_sampler)."""
    return dataset.select_columns(["length"]).with_format("numpy")[:]["length"].tolist()


def shuffled_batch_order(indices, batch_size, generator=None):
    """`indices` cut into batches of `batch_size`, the batches put in random order; the first batch
    (the longest, so that running out of memory shows at once) and a short last one stay in place.

    transformers' length grouping sorts each megabatch of up to 50 batches from the longest to the
    shortest, so one optimizer step after another walks down through the lengths. With the batches
    shuffled, each still holds examples of one length (the padding saved is the same), but their
    order is random again. On the demo that raised span_accuracy at step 800 from 0.345 to 0.448.
    """
    if not indices:
        return indices
    batches = [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]
    full = len(indices) // batch_size
    middle = (torch.randperm(max(full - 1, 0), generator=generator) + 1).tolist()
    order = [0] + middle + list(range(max(full, 1), len(batches)))
    return [index for batch in order for index in batches[batch]]


class ShuffledLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches in random order, drawn from a generator seeded with (seed, epoch).

    transformers' LengthGroupedSampler draws from the global torch RNG, whose state at the start
    of an epoch depends on everything trained before it; a run resumed in the middle of an
    epoch then skips the first batches of a different order and trains on other examples.
    Seeded per epoch (accelerate calls set_epoch before each epoch), the order is the same in
    an uninterrupted and in a resumed run, and in every process under torchrun.
    """

    def __init__(self, *args, seed=0, epoch_in_index=False, shuffle_batches=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.epoch_in_index = epoch_in_index  # yield epoch * len + index, for data.MaskedExamples
        self.shuffle_batches = shuffle_batches  # False: transformers' order, longest to shortest (bench.py --only order)
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.generator = torch.Generator().manual_seed(self.seed + epoch)

    def __iter__(self):
        order = list(super().__iter__())
        if self.shuffle_batches:
            order = shuffled_batch_order(order, self.batch_size, self.generator)
        offset = self.epoch * len(self.lengths) if self.epoch_in_index else 0
        return iter([offset + index for index in order])


class LossWindow(TrainerCallback, ExportableState):
    """Carries the training loss summed since the last progress line across an interrupt.

    The Trainer logs the mean loss over the steps since its last log line but keeps that sum
    in memory only, so after a resume the first line averaged fewer steps than the same line
    of an uninterrupted run. Kept in every checkpoint, the line is the same. (Under torchrun
    the main process's sum stands for all.)
    """

    def __init__(self, trainer=None):
        self.trainer = trainer

    def state(self):
        loss = getattr(self.trainer, "_tr_loss", None)
        return {"args": {}, "attributes": {
            "loss_sum": float(loss) if loss is not None else 0.0,
            "last_logged_step": getattr(self.trainer, "_globalstep_last_logged", 0)}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.setdefault(type(self).__name__, {})  # absent in older checkpoints
        attributes = saved.get("attributes") if isinstance(saved, dict) else None
        if state.global_step and attributes:
            self.trainer._tr_loss += attributes["loss_sum"]
            self.trainer._globalstep_last_logged = attributes["last_logged_step"]


class DomainFocusTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer that adds restoration metrics on a fixed validation subset.

    eval_loss covers the whole validation set; restoration, which costs far more per example,
    runs on `generation_examples` only, so evaluation stays a small share of a run. It restores
    them exactly as restore.py would with the model's saved decoding settings (restoration.py),
    each gap's length taken from its target as a marker run would show it.
    """

    def __init__(self, *args, generation_examples=(), guard=None, shuffle_batches=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.generation_examples = generation_examples
        self.guard = guard  # a NonFiniteGuard, told about every loss and gradient norm
        self.shuffle_batches = shuffle_batches  # length-grouped batches in random order; read when training starts
        self.restorer = None  # built at the first evaluation, kept while the model is the same
        self.epoch_sampler = None  # the training sampler, told each epoch (see _run_epoch)
        self.truncated_examples = 0  # raw text: masked examples cut to the length limits in this process
        self.add_callback(LossWindow(self))
        self.sharded = is_sharded(self.model)
        if self.sharded:  # sharding.py sharded it: the Trainer must not wrap it in DistributedDataParallel
            self.is_distributed_loading_by_transformers = True

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.truncated_examples += int(inputs.pop("truncated", 0))  # data.MaskingCollator's count, not for the model
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.guard and self.args.fp16:  # elsewhere the gradient norm tells, without a sync per micro-batch
            self.guard.loss_seen(loss)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if self.guard and self.guard.gradients_seen(grad_norm, scaler_skips_overflow=self.args.fp16):
            model.zero_grad(set_to_none=True)  # the optimizer skips parameters without gradients
        return grad_norm

    # --- sharded runs (sharding.py): weights and optimizer state saved and loaded shard by shard ---

    def _save(self, output_dir=None, state_dict=None):
        if not self.sharded:
            return super()._save(output_dir, state_dict)
        weights = full_state_dict(self.model)  # every process takes part; the main one gets the full weights
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            self.model.save_pretrained(output_dir, state_dict=weights)
            self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))  # as the Trainer's own _save

    def _save_optimizer_and_scheduler(self, output_dir):
        if not self.sharded:
            return super()._save_optimizer_and_scheduler(output_dir)
        save_shards(self.model, self.optimizer, os.path.join(output_dir, SHARDED_FOLDER))
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, "scheduler.pt"))

    def _defer_fsdp_gradient_reduction(self):
        # The Trainer's version reads the sharding plan of a model transformers sharded at load time.
        return gradients_unsynced(self.model)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self.sharded:  # a sharded run loads its weights with the optimizer state, below
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint):
        if self.sharded and checkpoint:
            load_shards(self.model, self.optimizer, os.path.join(checkpoint, SHARDED_FOLDER))
            self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, "scheduler.pt"), weights_only=True))
        else:
            super()._load_optimizer_and_scheduler(checkpoint)
        # A checkpoint's scheduler brings back the learning rate it was started with; the
        # LEARNING_RATE set now must win, or lowering it after a divergence would do nothing.
        if checkpoint and hasattr(self.lr_scheduler, "base_lrs"):
            self.lr_scheduler.base_lrs = [self.args.learning_rate] * len(self.lr_scheduler.base_lrs)
            step = self.lr_scheduler.last_epoch  # and the very next update already uses it
            for group, factor in zip(self.optimizer.param_groups, getattr(self.lr_scheduler, "lr_lambdas", ())):
                group["lr"] = self.args.learning_rate * factor(step)
            self.lr_scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]  # what gets logged

    def _save_checkpoint(self, model, trial):
        # The Trainer writes checkpoint-N file by file; a failed write (full disk) must not
        # leave a half checkpoint taking space, nor end in a traceback.
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        existed = os.path.isdir(folder)
        try:
            super()._save_checkpoint(model, trial)
        except Exception as error:
            if self.args.should_save and not existed:
                shutil.rmtree(folder, ignore_errors=True)
            raise SaveFailed(f"could not write {folder}: {write_error(error)}") from error

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        if metric_key_prefix == "eval" and self.generation_examples:
            model = self.accelerator.unwrap_model(self.model)
            if self.restorer is None or self.restorer.model is not model:
                self.restorer = Restorer(model, self.processing_class)
            self.restorer.decoding = Decoding.of_model(model, batch_size=self.args.per_device_eval_batch_size)
            targets = [target for _, target in self.generation_examples]
            documents = [from_sentinels(text, target_lengths(target) if SENTINEL.search(target) else None)
                         for text, target in self.generation_examples]
            # Under torchrun each process restores every world_size-th example, then every process gathers them all.
            rank, world = self.args.process_index, self.args.world_size
            with full_weights(self.model):  # sharded: each process restores its share on full weights
                results, pairs = graded_spans(self.restorer, documents[rank::world], targets[rank::world])
            mine = [result["prediction"] for result in results]
            predictions = mine
            if world > 1:
                import torch.distributed as dist

                gathered = [None] * world
                dist.all_gather_object(gathered, (mine, pairs))
                predictions = [gathered[index % world][0][index // world] for index in range(len(documents))]
                pairs = [pair for _, theirs in gathered for pair in theirs]
            for name, value in restoration_metrics(predictions, targets).items():
                output.metrics[f"eval_{name}"] = value
            self.calibrate(model, pairs, output.metrics)
        return output

    def calibrate(self, model, pairs, metrics):
        """Fit how confidence is shown on this evaluation's spans (calibration.py) and keep it in the
        model's generation config, so that the best/ and latest/ saved from this evaluation show
        calibrated confidence; log the error before and after, and draw OUTPUT_DIR/reliability.png."""
        temperature, shift = fit(pairs)
        decoding = self.restorer.decoding  # read from the model at this evaluation: saved back with the fit
        decoding.confidence_temperature, decoding.confidence_shift = temperature, shift
        decoding.save_to(model)
        if not pairs:
            return
        metrics.update(eval_calibration_error=calibration_error(pairs), eval_confidence_temperature=temperature,
                       eval_confidence_shift=shift,
                       eval_calibration_error_fitted=calibration_error(recalibrated(pairs, temperature, shift)))
        if self.args.should_save:
            try:
                draw_reliability(os.path.join(self.args.output_dir, "reliability.png"), pairs, temperature, shift,
                                 f"Validation spans at step {self.state.global_step}")
            except OSError as error:  # a picture is not worth stopping a run for
                logger.warning("Could not draw reliability.png: %s", error)

    def _run_epoch(self, model, epoch, *args, **kwargs):
        # Under torchrun, a run resumed in a later epoch wraps the sampler as SkipBatchSampler(
        # BatchSamplerShard(BatchSampler(sampler))), deeper than the Trainer's and accelerate's
        # set_epoch reach, and it drew the order of epoch 0 again. The sampler is told here.
        if isinstance(self.epoch_sampler, ShuffledLengthGroupedSampler):
            self.epoch_sampler.set_epoch(epoch)
        return super()._run_epoch(model, epoch, *args, **kwargs)

    # The Trainer drops unused columns before it builds the length-grouped sampler, which
    # throws away the precomputed "length" column; and datasets 5 hands the column over as a
    # lazy Column that the sampler then reads one row at a time (9 s per epoch for 120,000
    # examples against 0.06 s from a list: `python bench.py --only knobs`). The sampler here
    # gets the lengths as a plain list, read as one numpy column, and shuffles the batch order.
    def _get_train_sampler(self, train_dataset=None):
        self.epoch_sampler = self.length_grouped_sampler()
        return self.epoch_sampler

    def length_grouped_sampler(self):
        if isinstance(self.train_dataset, MaskedExamples):  # raw text: lengths in characters, epoch in the index
            return ShuffledLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                                lengths=self.train_dataset.lengths, seed=self.args.seed,
                                                epoch_in_index=True, shuffle_batches=self.shuffle_batches)
        sampler = super()._get_train_sampler(self.train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            sampler = ShuffledLengthGroupedSampler(sampler.batch_size, lengths=length_list(self.train_dataset),
                                                   seed=self.args.seed, shuffle_batches=self.shuffle_batches)
        return sampler
