"""GPU memory of the mT5 sizes, planned from their published configs (no download): each optimizer
in full fine-tuning, the batch shapes that fit 6 GB, LoRA's plan, and the larger sizes sharded
with FSDP over several GPUs."""

from benchmarks.common import print_table

# The published configs of Google's mT5 checkpoints (vocabulary 250,112, d_kv 64, gated GELU,
# LM head not tied to the embedding): (d_model, d_ff, layers per stack, heads).
MT5_CONFIGS = {"mt5-small": (512, 1024, 8, 6), "mt5-base": (768, 2048, 12, 12), "mt5-large": (1024, 2816, 24, 16)}
LARGE_MT5_CONFIGS = {"mt5-large": MT5_CONFIGS["mt5-large"], "mt5-xl": (2048, 5120, 24, 32),
                     "mt5-xxl": (4096, 10240, 24, 64)}


def mt5_shapes(d_model, d_ff, layers, heads, vocab_size=250112):
    """An mT5 model on the meta device (shapes only), counted as the tool counts it: the published
    checkpoints have a separate LM head, so modeling.model_shapes gives it one."""
    from transformers import MT5Config

    from domainfocus.modeling import model_shapes

    return model_shapes(MT5Config(vocab_size=vocab_size, d_model=d_model, d_ff=d_ff, num_layers=layers,
                                  num_heads=heads, d_kv=64), untied_head=True)


def bench_memory(options, folder):
    """Training memory of the mT5 sizes per optimizer, then LoRA's plan."""
    print()
    full_memory(options.train.default_config())
    lora_memory(options.train.default_config())
    sharded_memory(options.train.default_config())


def full_memory(defaults):
    """Training memory of the mT5 sizes per optimizer, and which mt5-base batches fit 6 GB."""
    from domainfocus.memory import gigabytes, gpu_memory, static_memory

    # TRIM_VOCAB keeps what the data uses; 33,000 tokens is an assumed size for one domain of
    # Chinese text (not measured here: no mT5 tokenizer offline), the size at which mt5-base has
    # about 250 M parameters.
    sizes = [(name, shape, 250112) for name, shape in MT5_CONFIGS.items()]
    sizes.insert(2, ("mt5-base, TRIM_VOCAB to 33,000 tokens", MT5_CONFIGS["mt5-base"], 33000))
    rows = []
    for name, shape, vocabulary in sizes:
        model = mt5_shapes(*shape, vocab_size=vocabulary)
        count = sum(parameter.numel() for parameter in model.parameters())
        for optimizer in ("adamw_torch", "adamw_8bit", "adafactor"):
            config = {**defaults, "OPTIMIZER": optimizer, "GRADIENT_CHECKPOINTING": True}
            rows.append((name, f"{count / 1e6:.1f} M", optimizer, gigabytes(static_memory(model, optimizer)["total"]),
                         gigabytes(gpu_memory(model, config)[1])))
    print_table(["model", "parameters", "optimizer", "weights + gradients + optimizer state",
                 "with activations, batch 4, 512 / 256 tokens, bf16, gradient checkpointing"], rows)
    # Which mt5-base settings fit a 6 GB GPU: the plan train.py prints, for batches of these lengths.
    print()
    model = mt5_shapes(*MT5_CONFIGS["mt5-base"])
    rows = []
    for batch, accumulation, lengths in ((4, 8, (512, 256)), (2, 16, (512, 256)), (1, 32, (512, 256)),
                                         (4, 8, (256, 64)), (4, 8, (128, 32))):
        config = {**defaults, "PER_DEVICE_BATCH_SIZE": batch, "GRADIENT_ACCUMULATION_STEPS": accumulation}
        total = gpu_memory(model, config, True, lengths)[1]
        rows.append((f"batch {batch} × accumulation {accumulation}", f"{lengths[0]} / {lengths[1]}", gigabytes(total),
                     "yes" if total <= config["GPU_MEMORY_GB"] * 2 ** 30 else "no"))
    print_table(["mt5-base (582.4 M), Adafactor, bf16, gradient checkpointing", "longest input / target tokens",
                 "planned total", "fits 6 GB"], rows)


def lora_memory(defaults):
    """LoRA's plan for the mT5 sizes: frozen weights in bf16, adapters with fp32 gradients and AdamW
    state, activations; for the settings train.py would run with (bf16, gradient checkpointing)."""
    from domainfocus.memory import gigabytes, gpu_memory

    configs = {**MT5_CONFIGS, **LARGE_MT5_CONFIGS}
    rows = []
    for name in ("mt5-base", "mt5-large", "mt5-xl"):
        model = mt5_shapes(*configs[name])
        for rank, batch, accumulation, lengths in ((8, 4, 8, (512, 256)), (8, 1, 32, (512, 256)), (8, 4, 8, (256, 64)),
                                                   (8, 1, 32, (256, 64))):
            config = {**defaults, "LORA_RANK": rank, "OPTIMIZER": "adamw_torch",
                      "PER_DEVICE_BATCH_SIZE": batch, "GRADIENT_ACCUMULATION_STEPS": accumulation}
            parts, total = gpu_memory(model, config, True, lengths)
            rows.append((name, f"rank {rank}, all linear layers", f"{batch} × {accumulation}",
                         f"{lengths[0]} / {lengths[1]}", f"{parts['gradients'] // 4 / 1e6:.1f} M", gigabytes(total),
                         "yes" if total <= 6 * 2 ** 30 else "no"))
    print()
    print_table(["model", "LoRA", "batch", "longest input / target tokens", "trained parameters", "planned total",
                 "fits 6 GB"], rows)


def sharded_memory(defaults, gpus=(1, 2, 4, 8), sizes=(24, 40, 80)):
    """Per-GPU plan of mt5-large, -xl and -xxl with FSDP='full_shard' over 1 to 8 GPUs: the training step
    (bf16, AdamW, gradient checkpointing, batch 4 of 512 / 256 tokens), and the evaluation that
    restores GEN_EVAL_SAMPLES on full weights; the GPU sizes each fits. Planned, not measured."""
    from domainfocus.memory import evaluation_memory, gigabytes, gpu_memory

    config = {**defaults, "FSDP": "full_shard", "OPTIMIZER": "adamw_torch", "GRADIENT_CHECKPOINTING": True}
    rows = []
    for name, shape in LARGE_MT5_CONFIGS.items():
        model = mt5_shapes(*shape)
        count = sum(parameter.numel() for parameter in model.parameters())
        for number in gpus:
            step = gpu_memory(model, config, True, None, number)[1]
            evaluation = evaluation_memory(model, config, True, number) or 0
            peak = max(step, evaluation)
            fits = [f"{size} GB" for size in sizes if peak <= size * 2 ** 30]
            rows.append((f"{name} ({count / 1e9:.2f} B)", number, gigabytes(step),
                         gigabytes(evaluation) if evaluation else "-", ", ".join(fits) or "none"))
    print()
    print_table(["model", "GPUs", "training step per GPU", "evaluation per GPU", "fits (planned)"], rows)
