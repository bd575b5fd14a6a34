"""Choice of torch device for training stages."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def choose_device(device: str = "auto", rank: int = 0) -> str:
    """Return a torch device string.

    ``auto`` picks a GPU when one is present (rank ``r`` gets GPU ``r mod n_gpus`` so that MPI
    ranks spread over the GPUs of a node), else the CPU. An explicit ``cuda`` request on a
    machine without one is an error rather than a silent fall-back.
    """
    import torch

    device = (device or "auto").lower()
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto":
        chosen = f"cuda:{rank % n_gpu}" if n_gpu else "cpu"
    elif device.startswith("cuda"):
        if not n_gpu:
            raise RuntimeError(f"device='{device}' was requested but torch sees no CUDA GPU; use device='auto' or 'cpu'")
        chosen = device if ":" in device else f"cuda:{rank % n_gpu}"
    elif device in ("cpu", "mps"):
        chosen = device
    else:
        raise ValueError(f"Unknown device '{device}': use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    log.info("using torch device %s", chosen)
    return chosen
