"""Fully sharded data parallel training (FSDP2) for models too big to copy onto every GPU.

With FSDP set, each process keeps 1/N of the weights, gradients and optimizer state; a T5Block's
full weights exist only while that block runs. The project applies torch's own `fully_shard`
itself, on CPU and GPU alike, instead of asking the Trainer for it: with transformers 5.23 and
accelerate, `fsdp="full_shard"` under `use_cpu=True` silently falls back to replicating the
model with DistributedDataParallel, and FSDP version 1 refuses to start without a GPU. One code
path means the promises tested here on CPU processes are the ones a GPU run relies on.

What the Trainer does not do for a model it did not shard is done here: checkpoints keep the
sharded weights and optimizer state with torch.distributed.checkpoint (each process writes its
own shard, and a resume with another number of processes reshards them), best/ and latest/ hold
full weights gathered onto the main process, and restoration at evaluation runs on full weights
that every process unshards for the purpose (processes restore different examples, so they must
not wait for each other inside the model).
"""

import contextlib
import os
import warnings

STRATEGIES = ("", "full_shard", "shard_grad_op", "hybrid_shard")
SHARDED_FOLDER = "sharded"  # in a checkpoint: each process's shard of the weights and optimizer state


def is_sharded(model):
    return bool(getattr(model, "domainfocus_sharding", ""))


def shard_group_size(strategy, world_size, local_world_size):
    """How many processes share one copy of the model: all of them, or with hybrid_shard those of one machine."""
    if not strategy or world_size <= 1:
        return 1
    return local_world_size if strategy == "hybrid_shard" else world_size


def shard_model(model, strategy, bf16, device_type):
    """Apply FSDP2 to a T5 / mT5 model in place and return it: each T5Block is one unit (its weights
    are gathered only while it runs), the shared embedding, the final norms and the LM head stay in
    the root unit. `strategy`: full_shard (weights freed after each block's forward), shard_grad_op
    (kept until its backward: more memory, less communication), hybrid_shard (sharded within a
    machine, replicated across machines)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    world = dist.get_world_size()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if strategy == "hybrid_shard" and world % local == 0 and world > local:
        mesh = init_device_mesh(device_type, (world // local, local), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(device_type, (world,), mesh_dim_names=("shard",))
    # bf16: blocks compute in bf16 from bf16 copies of the weights; gradients are reduced and the
    # sharded master weights updated in fp32.
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else \
        MixedPrecisionPolicy()
    reshard = strategy != "shard_grad_op"
    # FSDP2 warns that a T5Block returns a view (the attention position bias it passes on); T5 does
    # no in-place operation on it, and sharded training matches replicated training (tests/test_sharding.py).
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDP\w*T5Block\) returned a view tensor")
    # fully_shard moves each unit to the mesh's device as it shards it: the whole model never sits on one GPU.
    for stack in (model.get_encoder(), model.get_decoder()):
        for block in stack.block:
            fully_shard(block, mesh=mesh, reshard_after_forward=reshard, mp_policy=policy)
    # The root (embeddings, LM head) stays gathered from forward to backward (None: FSDP2's own rule for it).
    fully_shard(model, mesh=mesh, reshard_after_forward=None if reshard else False, mp_policy=policy)
    model.domainfocus_sharding = strategy
    return model


@contextlib.contextmanager
def gradients_unsynced(model):
    """Micro-batches before the last of an optimizer step keep their gradients unreduced (the Trainer
    asks for this context of a model FSDP manages: DomainFocusTrainer._defer_fsdp_gradient_reduction)."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


@contextlib.contextmanager
def full_weights(model):
    """Every process holds the model's full weights until the block ends, and the model runs without
    communicating: FSDP2's unshard on every unit, with resharding after forward switched off.

    Evaluation restores a different share of the examples in each process, with different numbers
    of decoding steps and candidate scorings; with sharded weights every forward pass would be a
    collective that all processes must reach together. (generate() is deliberately not registered
    with FSDP's register_fsdp_forward_method: it is only called in here, on whole weights, and the
    hooks it would add reshard the root unit when generate() returns, as the forward passes nested
    in it leave the unit's state idle.)"""
    if not is_sharded(model):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [module for module in model.modules() if isinstance(module, FSDPModule)]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    # generate() sees the FSDP mark that fully_shard puts on the model and then keeps every process
    # stepping until all are done (synced_gpus); processes restoring different numbers of windows
    # would wait on each other. With the weights whole, each process generates alone.
    model._is_fsdp_managed_module = False
    try:
        yield
    finally:
        model._is_fsdp_managed_module = True
        reshard = model.domainfocus_sharding != "shard_grad_op"
        for unit in units:  # as shard_model left them: the blocks as the strategy says, the root never
            unit.set_reshard_after_forward(reshard and unit is not model, recurse=False)
            unit.reshard()


def full_state_dict(model):
    """The full weights as CPU tensors on the main process ({} elsewhere); every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Tied weights (T5's shared embedding and LM head) come once under each name; save_pretrained
    # would write every copy, so only the first name of each is kept, as a model saved whole has it.
    kept = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    return {name: tensor for name, tensor in weights.items() if name in kept}


def save_shards(model, optimizer, folder):
    """Each process writes its shard of the weights and of the optimizer state to `folder`
    (torch.distributed.checkpoint; the main process writes the index, .metadata, last)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, state = get_state_dict(model, optimizer)
    dcp.save({"model": weights, "optimizer": state}, checkpoint_id=folder)


def load_shards(model, optimizer, folder):
    """Read the shards `save_shards` wrote into the model and optimizer, resharded when the number of
    processes changed since."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    weights, state = get_state_dict(model, optimizer)
    loaded = {"model": weights, "optimizer": state}
    dcp.load(loaded, checkpoint_id=folder)
    set_state_dict(model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"])
