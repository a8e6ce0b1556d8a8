"""Run ``i2e_train.train`` with every Python-level torch.distributed collective counted.

Usage (under torchrun): ``count_collectives.py OUT_DIR <i2e-train arguments>``; each rank writes
``OUT_DIR/rank<R>.json`` with the counts when it exits. DDP's own gradient all-reduce runs inside
its C++ reducer and is not counted: what is counted is what the training code itself asks for.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_object",
    "broadcast",
    "broadcast_object_list",
    "barrier",
    "reduce",
    "gather",
    "scatter",
    "reduce_scatter",
    "all_to_all",
)
counts: collections.Counter[str] = collections.Counter()


def counted(name, fn):  # noqa: ANN001, ANN201 - a thin wrapper
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        counts[name] += 1
        return fn(*args, **kwargs)

    return wrapper


for _name in COLLECTIVES:
    setattr(dist, _name, counted(_name, getattr(dist, _name)))

out_dir = Path(sys.argv.pop(1))


@atexit.register
def _write() -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(counts))


from i2e_train.commands.train import main  # noqa: E402 - after the patch

main()
