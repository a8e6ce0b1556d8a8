"""The one device resolver, shared by training, evaluation, conversion and the benchmark."""

from __future__ import annotations

import torch


def resolve_device(preference: str, local_rank: int = 0, key: str = "trainer.device") -> torch.device:
    """The one device resolver: ``auto`` picks the GPU when there is one (this process's GPU under
    torchrun); ``cuda`` / ``cuda:N`` without a GPU is a clear error naming ``key``."""
    if preference not in ("auto", "cpu", "cuda") and not preference.startswith("cuda:"):
        raise ValueError(f"{key} must be auto, cpu, cuda or cuda:N, got '{preference}'")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"{key}={preference} but no CUDA GPU is visible; use {key}=auto or cpu")
    if preference.startswith("cuda:"):
        try:
            index = int(preference.partition(":")[2])
        except ValueError:
            raise ValueError(f"{key} must be auto, cpu, cuda or cuda:N, got '{preference}'") from None
        if not 0 <= index < torch.cuda.device_count():
            raise ValueError(f"{key}={preference} but only {torch.cuda.device_count()} GPU(s) are visible")
        return torch.device("cuda", index)
    return torch.device("cuda", local_rank % torch.cuda.device_count())
