"""Helpers for runs under torchrun or accelerate: which process writes, and decisions every process
takes together. In a single process each of them is a no-op."""

import os


def is_main_process():
    return int(os.environ.get("RANK", "0")) == 0  # torchrun and accelerate set RANK; rank 0 writes


def agree(args, value, total=False):
    """The largest `value` over all processes, or with `total` their sum (just `value` in a single process).

    Under torchrun every process must stop at the same step, or the others wait forever in the
    next gradient all-reduce; every call site is one that all processes reach together.
    """
    if args.world_size <= 1:
        return value
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([float(value)], device=args.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if total else dist.ReduceOp.MAX)
    return type(value)(tensor.item())


def main_process_value(args, value):
    """`value` as the main process has it, on every process (just `value` in a single process).

    Decisions taken by each process alone could differ; with the main process's value every
    process takes the same one."""
    if args.world_size <= 1:
        return value
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([float(value)], dtype=torch.float64, device=args.device)
    dist.broadcast(tensor, src=0)
    return tensor.item()


def leave_process_group():
    """Under torchrun: wait until every process is done, then close their group. A process that
    leaves while the main one still saves best/ and latest/ can abort in the communication
    library's teardown (SIGABRT), and torchrun then stops the main one with SIGTERM mid-save."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def join_process_group():
    """Join the group of processes torchrun started (gloo: a barrier and a sum serve CPU and GPU runs alike)."""
    import torch.distributed as dist

    dist.init_process_group(backend="gloo")


def barrier():
    import torch.distributed as dist

    dist.barrier()


def total(value):
    """The sum of an integer over all processes of the group."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(tensor)
    return int(tensor.item())
