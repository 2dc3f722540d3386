"""What every torchrun test worker does last."""

from __future__ import annotations

import os
import sys

import torch.distributed as dist


def exit_cleanly() -> None:
    """Barrier, tear gloo down, and leave with status 0 without running C++ static destructors.

    No rank tears the group down while the other still has collectives in flight. On a loaded machine gloo's
    background threads can still be joinable at interpreter exit, and libstdc++ then aborts ("terminate called
    without an active exception") after every check of the worker has passed; ``os._exit`` skips that.
    """
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
