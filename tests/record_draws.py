"""``accelerate launch tests/record_draws.py TRAIN_FLAGS...``: train.py, recording what each process's
augmentation draws for its batches (tests/test_distributed.py).

Before each training batch is augmented, the next 8 uniforms of torch's generator (which the crop, flip and
jitter draw from) and of numpy's (which timm's mixup draws from) are read without consuming them, and
OUTPUT_DIR/draws_<rank>.json gets the list: equal lists on two processes mean equal draws.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train.py and this checkout's package

import train
from trashnet_hf.data.transforms import TrainTransform

draws: list[dict[str, list[float]]] = []
real_forward = TrainTransform.forward


def recording_forward(self: TrainTransform, pixels: torch.Tensor) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        upcoming = torch.rand(8).tolist()
    state = np.random.get_state()
    upcoming_np = np.random.random(8).tolist()
    np.random.set_state(state)
    draws.append({"torch": upcoming, "numpy": upcoming_np})
    return real_forward(self, pixels)


if __name__ == "__main__":
    TrainTransform.forward = recording_forward
    code = train.main(sys.argv[1:])
    out = Path(sys.argv[sys.argv.index("--output-dir") + 1])
    (out / f"draws_{os.environ.get('RANK', '0')}.json").write_text(json.dumps(draws))
    sys.exit(code)
