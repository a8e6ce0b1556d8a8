"""How many events the paper's fp16 training path changes against the exact conversion.

The paper's code converts inside its fp16 autocast: V is rounded to fp16 and its conv2d returns
fp16 differences, so differences at the threshold can flip. This script emulates that path on
scikit-image's photographs at 224x224 and the paper's two ratios and prints the share of events
that differ from ``i2e_convert`` (docs/deviations.md quotes its output).

    python scripts/paper_fp16_events.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from skimage import data
from torchvision.transforms.v2 import functional as TF

from i2e_train.events.i2e import fixed_pairs, i2e_convert


def paper_fp16_events(images_BCHW: torch.Tensor, ratio: float) -> torch.Tensor:
    weights = torch.zeros(8, 1, 3, 3)
    for t, (p_from, p_to) in enumerate(fixed_pairs()):
        weights[t, 0, (p_to - 1) // 3, (p_to - 1) % 3] += 1
        weights[t, 0, (p_from - 1) // 3, (p_from - 1) % 3] -= 1
    v = TF.to_dtype(images_BCHW, torch.float32, scale=True).amax(1, keepdim=True)
    th = ratio * (v.amax((1, 2, 3), keepdim=True) - v.amin((1, 2, 3), keepdim=True))
    dv = F.conv2d(F.pad(v.half().float(), (1, 1, 1, 1), mode="replicate"), weights).half().float()
    on, off = F.relu(dv) >= th, F.relu(-dv) >= th
    return torch.stack((on, off), 2).transpose(0, 1)


def main() -> None:
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    images = torch.stack(
        [TF.resize(torch.from_numpy(p).permute(2, 0, 1), [224, 224], antialias=True) for p in photos]
    )
    for ratio in (0.07, 0.12):
        exact = i2e_convert(images, ratio, dtype=torch.bool)
        differ = (paper_fp16_events(images, ratio) != exact).float().mean().item()
        print(
            f"ratio {ratio}: {100 * differ:.4f}% of {exact.numel()} events differ from the exact conversion"
        )


if __name__ == "__main__":
    main()
