"""Fine-tune a timm ResNet-18 on TrashNet (or any ImageFolder) with Accelerate; track with W&B.

    accelerate launch train.py                                     # Hub data, pretrained backbone
    python train.py --data-dir trashnet_hf/sample --pretrained false --epochs 3 --image-size 64

Every flag is listed by --help. Outputs go to --output-dir: model/, results.json, confusion_matrix.png,
curves.png, data_report.json, split_manifest.csv, checkpoints/; with --push-to-hub --hub-model-id USER/NAME
the run is then published to the Hub (trashnet_hf/publish.py; the folders it uploads stay in publish/).
"""

from __future__ import annotations

import logging
import sys

from trashnet_hf.core import cli
from trashnet_hf.core.config import TrainConfig

log = logging.getLogger("train")


def run(cfg: TrainConfig) -> int:
    # Imported after parsing: --help and a bad flag answer without loading the training stack.
    from trashnet_hf.core.results import smoke_run_notice
    from trashnet_hf.hub import publish
    from trashnet_hf.training.loop import train
    from trashnet_hf.training.report import format_final_table

    # --push-to-hub: a missing token or an unreachable Hub fails now, in seconds, not after training.
    api = publish.ready_to_push() if cfg.push_to_hub else None
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint file is noise
    result = train(cfg)
    if result.results is not None:
        log.info("\n%s", format_final_table(result.results))
        if (notice := smoke_run_notice(result.results)) is not None:
            log.warning(notice)
        outputs = "model/, results.json, confusion_matrix.png, curves.png"
        outputs += ", reliability.png" if "calibration" in result.results else ""
        log.info("Outputs in %s: %s", result.output_dir, outputs)
        if result.results.get("wandb_sync"):
            log.info("Upload the offline W&B run with: %s", result.results["wandb_sync"])
    if api is not None:
        publish.publish_trained(cfg, result.results is not None, api)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(TrainConfig, run, argv, description=__doc__, prog="train.py")


if __name__ == "__main__":
    sys.exit(main())
