"""The GPU memory a run needs, estimated before loading anything onto a GPU: weights, gradients,
optimizer state (as torch and transformers allocate it) and activations. `python train.py --check`
and bench.py use it; the plan printed before training suggests changes that fit."""

import logging
import math
import os

from domainfocus.settings import lora_targets
from domainfocus.sharding import shard_group_size

logger = logging.getLogger("domainfocus")


def optimizer_state_bytes(model, optimizer, shapes=None):
    """Bytes of optimizer state, exactly as torch and transformers allocate it after the first step,
    for the model's trainable parameters or, with LoRA, for the adapter matrices `shapes`.

    AdamW keeps two fp32 moments and a 4-byte step counter per tensor. Adafactor (no momentum)
    keeps a factored second moment, one value per row and per column, for matrices, and a 4-byte
    running RMS per tensor. 8-bit AdamW
    keeps two 1-byte moments, except for embeddings, which the Trainer keeps in 32 bits."""
    import torch

    embeddings = {id(module.weight) for module in model.modules() if isinstance(module, torch.nn.Embedding)}
    if shapes is None:
        shapes = [(tuple(p.shape), id(p) in embeddings) for p in model.parameters() if p.requires_grad]
    else:
        shapes = [(shape, False) for shape in shapes]
    total = 0
    for shape, embedding in shapes:
        count = math.prod(shape)
        if optimizer == "adamw_torch" or (optimizer == "adamw_8bit" and embedding):
            total += 8 * count + 4
        elif optimizer == "adamw_8bit":
            total += 2 * count + 4
        elif len(shape) >= 2:  # Adafactor: factored second moment, plus its RMS as a 4-byte tensor
            total += 4 * (math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]) + 4
        else:
            total += 4 * count + 4
    return total


def adapter_shapes(model, rank, targets):
    """The two LoRA matrices, (rank, inputs) and (outputs, rank), of every linear layer named in `targets`."""
    import torch

    shapes = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            shapes += [(rank, module.in_features), (module.out_features, rank)]
    return shapes


def static_memory(model, optimizer, lora_rank=0, lora_targets=(), half=False):
    """{weights, gradients, optimizer state, total} in bytes: fp32 master weights and gradients,
    as the Trainer keeps them in fp32, bf16 and fp16 alike. Activations are not included.
    With LoRA (`lora_rank` > 0) the model's own weights are frozen, in bf16 when `half` (as
    train.py loads them then), and only the adapters have fp32 gradients and optimizer state."""
    if lora_rank:
        shapes = adapter_shapes(model, lora_rank, lora_targets)
        adapters = 4 * sum(math.prod(shape) for shape in shapes)
        frozen = (2 if half else 4) * sum(parameter.numel() for parameter in model.parameters())
        state = optimizer_state_bytes(model, optimizer, shapes)
        return {"weights": frozen + adapters, "gradients": adapters, "optimizer state": state,
                "total": frozen + 2 * adapters + state}
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    weights = sum(4 * parameter.numel() for parameter in parameters)
    state = optimizer_state_bytes(model, optimizer)
    return {"weights": weights, "gradients": weights, "optimizer state": state, "total": 2 * weights + state}


def planned_state(model, config, half):
    """static_memory for the OPTIMIZER and LoRA settings of `config`."""
    return static_memory(model, config["OPTIMIZER"], config["LORA_RANK"], lora_targets(config), half)


def activation_bytes(model_config, batch, source, target, half, checkpointing):
    """An estimate of the activations one batch keeps for the backward pass (T5 / mT5 layout).

    Counted per layer from the tensors autograd saves: norms, attention projections and scores,
    feed-forward (gated in mT5) outputs, cross-attention keys and values; plus the fp32 logits over
    the whole vocabulary with their log-softmax and gradient, which dominate for mT5's 250 k
    tokens. With gradient checkpointing a layer keeps only its input, and one layer at a time is
    recomputed in full."""
    d, heads = model_config.d_model, model_config.num_heads
    inner, d_ff = heads * model_config.d_kv, model_config.d_ff
    ffn = (3 if getattr(model_config, "is_gated_act", False) else 2) * d_ff
    encoder_layer = source * (4 * d + 4 * inner + ffn) + 2 * heads * source * source
    decoder_layer = (target * (6 * d + 8 * inner + ffn) + 2 * inner * source
                     + 2 * heads * (target * target + target * source))
    encoder_layers, decoder_layers = model_config.num_layers, model_config.num_decoder_layers
    if checkpointing:
        layers = encoder_layers * source * d + decoder_layers * target * d + max(encoder_layer, decoder_layer)
    else:
        layers = encoder_layers * encoder_layer + decoder_layers * decoder_layer
    logits = 3 * target * model_config.vocab_size
    return batch * (layers * (2 if half else 4) + 4 * logits)


CUDA_CONTEXT = int(0.8 * 2 ** 30)  # the CUDA context and allocator reserve: several hundred MB to over 1 GB


def gpu_memory(model, config, half=True, lengths=None, processes=1, local_processes=None):
    """{part: bytes} for one training step on a GPU with these settings, and the total.

    `lengths` = (longest input, longest target) in the data; batches are padded only to their own
    longest example, so the peak comes from the longest ones, never beyond the limits.
    `processes` (and `local_processes`, those on one machine): with FSDP, each GPU of the run."""
    source, target = lengths or (config["MAX_INPUT_LENGTH"], config["MAX_TARGET_LENGTH"])
    source, target = min(source, config["MAX_INPUT_LENGTH"]), min(target, config["MAX_TARGET_LENGTH"])
    parts = dict(planned_state(model, config, half))
    parts.pop("total")
    group = shard_group_size(config.get("FSDP", ""), processes, local_processes or processes)
    if group > 1:
        parts = {name: math.ceil(size / group) for name, size in parts.items()}
        parts["gathered weights"] = gathered_bytes(model, config["FSDP"], half)
    parts["activations"] = activation_bytes(model.config, config["PER_DEVICE_BATCH_SIZE"], source, target, half,
                                            config["GRADIENT_CHECKPOINTING"])
    parts["CUDA context"] = CUDA_CONTEXT
    return parts, sum(parts.values())


def gathered_bytes(model, strategy, half):
    """FSDP: the full weights (and their unreduced gradients) a GPU holds at once besides its shard.
    The root unit (embeddings, LM head, final norms) stays gathered for the whole step, and with
    full_shard two T5Blocks at a time (the one running and the next, fetched ahead); with
    shard_grad_op every block stays gathered from its forward to its backward."""
    size = 2 if half else 4  # weights are gathered in the compute precision
    blocks = [sum(parameter.numel() for parameter in block.parameters())
              for stack in (model.get_encoder(), model.get_decoder()) for block in stack.block]
    root = sum(parameter.numel() for parameter in model.parameters()) - sum(blocks)
    held = sum(blocks) if strategy == "shard_grad_op" else 2 * max(blocks)
    return size * (root + held) + size * (root + 2 * max(blocks))  # weights, then gradients before reduce-scatter


def evaluation_memory(model, config, half, processes=1, local_processes=None):
    """FSDP with GEN_EVAL_SAMPLES: bytes a GPU holds while evaluation restores examples on full weights
    (its shard of the weights and optimizer state, the full weights in compute precision, the
    context); None when that does not apply."""
    group = shard_group_size(config.get("FSDP", ""), processes, local_processes or processes)
    if group <= 1 or not config["GEN_EVAL_SAMPLES"]:
        return None
    state = planned_state(model, config, half)
    full = (2 if half else 4) * sum(parameter.numel() for parameter in model.parameters())
    return math.ceil((state["weights"] + state["optimizer state"]) / group) + full + CUDA_CONTEXT


def memory_plan(model, config, half=True, lengths=None, processes=1, local_processes=None):
    """(lines, fits): the GPU memory estimate against GPU_MEMORY_GB and, when it does not fit, the
    single changes that would make it fit. With FSDP over several `processes`, per GPU."""
    budget = config["GPU_MEMORY_GB"] * 2 ** 30
    parts, total = gpu_memory(model, config, half, lengths, processes, local_processes)
    toggled = gpu_memory(model, {**config, "GRADIENT_CHECKPOINTING": not config["GRADIENT_CHECKPOINTING"]}, half,
                         lengths, processes, local_processes)[0]
    without = toggled["activations"]
    longest = "" if lengths is None else f" for batches of the longest examples ({lengths[0]} / {lengths[1]} tokens)"
    group = shard_group_size(config.get("FSDP", ""), processes, local_processes or processes)
    sharded = f", per GPU with FSDP={config['FSDP']!r} sharded over {group}" if group > 1 else ""
    lines = [f"GPU memory estimate{longest}{sharded}: {gigabytes(total)} of GPU_MEMORY_GB="
             f"{config['GPU_MEMORY_GB']:g} ({', '.join(f'{name} {gigabytes(size)}' for name, size in parts.items())}; "
             f"activations {'without' if config['GRADIENT_CHECKPOINTING'] else 'with'} gradient checkpointing would "
             f"be {gigabytes(without)})"]
    evaluation = evaluation_memory(model, config, half, processes, local_processes)
    if evaluation is not None:
        lines[0] += (f"; evaluation restores on full weights: {gigabytes(evaluation)}"
                     + ("" if evaluation <= budget else " (does not fit: set GEN_EVAL_SAMPLES=0 and METRIC_FOR_BEST_MODEL="
                        "'eval_loss', or use more memory per GPU)"))
        total = max(total, evaluation)
    if total <= budget:
        return lines, True
    batch, accumulation = config["PER_DEVICE_BATCH_SIZE"], config["GRADIENT_ACCUMULATION_STEPS"]
    changes = [{"GRADIENT_CHECKPOINTING": True}, {"OPTIMIZER": "adamw_torch" if config.get("FSDP") else "adafactor"},
               {"PER_DEVICE_BATCH_SIZE": max(batch // 2, 1), "GRADIENT_ACCUMULATION_STEPS": accumulation * 2},
               {"PER_DEVICE_BATCH_SIZE": 1, "GRADIENT_ACCUMULATION_STEPS": batch * accumulation},
               {"MAX_INPUT_LENGTH": config["MAX_INPUT_LENGTH"] // 2, "MAX_TARGET_LENGTH": config["MAX_TARGET_LENGTH"] // 2}]
    fitting = []
    for change in changes:
        if any(config[name] == value for name, value in change.items()):
            continue
        changed_total = gpu_memory(model, {**config, **change}, half, lengths, processes, local_processes)[1]
        if changed_total <= budget:
            fitting.append(" ".join(f"--{name}={value}" for name, value in change.items())
                           + f" ({gigabytes(changed_total)})")
    lines.append(f"It will not fit in {config['GPU_MEMORY_GB']:g} GB. " + (
        "Changes that fit: " + "; ".join(fitting) if fitting else
        "No single change fits; combine them, choose a smaller model, or raise GPU_MEMORY_GB if your GPU is larger."))
    return lines, False


def gigabytes(count):
    return f"{count / 2**30:.2f} GB" if count >= 2**28 else f"{count / 2**20:.1f} MB"


def report_memory(model, config, counts, precision_flags):
    longest = (counts["train"]["longest_input"], counts["train"]["longest_target"])
    world = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun or accelerate launch
    lines, fits = memory_plan(model, config, precision_flags["bf16"] or precision_flags["fp16"], longest, world,
                              int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    logger.info(lines[0])
    if not fits:
        logger.warning(lines[1])
