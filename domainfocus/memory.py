"""The GPU memory a run needs, estimated before loading anything onto a GPU: weights, gradients,
optimizer state (as torch and transformers allocate it) and activations. `python train.py --check`
and bench.py use it; the plan printed before training suggests changes that fit."""

import logging
import math

from domainfocus.settings import lora_targets

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


def gpu_memory(model, config, half=True, lengths=None):
    """{part: bytes} for one training step on a GPU with these settings, and the total.

    `lengths` = (longest input, longest target) in the data; batches are padded only to their own
    longest example, so the peak comes from the longest ones, never beyond the limits."""
    source, target = lengths or (config["MAX_INPUT_LENGTH"], config["MAX_TARGET_LENGTH"])
    source, target = min(source, config["MAX_INPUT_LENGTH"]), min(target, config["MAX_TARGET_LENGTH"])
    parts = dict(planned_state(model, config, half))
    parts.pop("total")
    parts["activations"] = activation_bytes(model.config, config["PER_DEVICE_BATCH_SIZE"], source, target, half,
                                            config["GRADIENT_CHECKPOINTING"])
    parts["CUDA context"] = CUDA_CONTEXT
    return parts, sum(parts.values())


def memory_plan(model, config, half=True, lengths=None):
    """(lines, fits): the GPU memory estimate against GPU_MEMORY_GB and, when it does not fit, the
    single changes that would make it fit."""
    budget = config["GPU_MEMORY_GB"] * 2 ** 30
    parts, total = gpu_memory(model, config, half, lengths)
    toggled = gpu_memory(model, {**config, "GRADIENT_CHECKPOINTING": not config["GRADIENT_CHECKPOINTING"]}, half,
                         lengths)[0]
    without = toggled["activations"]
    longest = "" if lengths is None else f" for batches of the longest examples ({lengths[0]} / {lengths[1]} tokens)"
    lines = [f"GPU memory estimate{longest}: {gigabytes(total)} of GPU_MEMORY_GB={config['GPU_MEMORY_GB']:g} "
             f"({', '.join(f'{name} {gigabytes(size)}' for name, size in parts.items())}; activations "
             f"{'without' if config['GRADIENT_CHECKPOINTING'] else 'with'} gradient checkpointing would be "
             f"{gigabytes(without)})"]
    if total <= budget:
        return lines, True
    batch, accumulation = config["PER_DEVICE_BATCH_SIZE"], config["GRADIENT_ACCUMULATION_STEPS"]
    changes = [{"GRADIENT_CHECKPOINTING": True}, {"OPTIMIZER": "adafactor"},
               {"PER_DEVICE_BATCH_SIZE": max(batch // 2, 1), "GRADIENT_ACCUMULATION_STEPS": accumulation * 2},
               {"PER_DEVICE_BATCH_SIZE": 1, "GRADIENT_ACCUMULATION_STEPS": batch * accumulation},
               {"MAX_INPUT_LENGTH": config["MAX_INPUT_LENGTH"] // 2, "MAX_TARGET_LENGTH": config["MAX_TARGET_LENGTH"] // 2}]
    fitting = []
    for change in changes:
        if any(config[name] == value for name, value in change.items()):
            continue
        changed_total = gpu_memory(model, {**config, **change}, half, lengths)[1]
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
    lines, fits = memory_plan(model, config, precision_flags["bf16"] or precision_flags["fp16"], longest)
    logger.info(lines[0])
    if not fits:
        logger.warning(lines[1])
