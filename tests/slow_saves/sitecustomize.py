"""Loaded through PYTHONPATH by tests that need to signal a run while it writes a checkpoint.

Every torch.save (optimizer, scheduler and RNG state of a checkpoint) announces itself on stderr
and takes two seconds longer, so that a test can send its signal in the middle of the save.
"""

import sys
import time

import torch

original_save = torch.save


def slow_save(obj, f, *args, **kwargs):
    print(f"SLOW SAVE {f}", file=sys.stderr, flush=True)
    time.sleep(2)
    return original_save(obj, f, *args, **kwargs)


torch.save = slow_save
