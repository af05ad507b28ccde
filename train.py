"""Fine-tune a timm ResNet-18 on TrashNet (or any ImageFolder) with Accelerate; track with W&B.

    accelerate launch train.py                                     # Hub data, pretrained backbone
    python train.py --data-dir trashnet_hf/sample --pretrained false --epochs 3 --image-size 64

Every flag is listed by --help. Outputs go to --output-dir: model/, results.json, confusion_matrix.png,
curves.png, data_report.json, split_manifest.csv, checkpoints/.
"""

from __future__ import annotations

import logging
import sys

from transformers import HfArgumentParser

from trashnet_hf.config import ConfigError, TrainConfig
from trashnet_hf.data import DataError, DataSourceError
from trashnet_hf.hub import HubUnavailableError
from trashnet_hf.report import format_final_table
from trashnet_hf.training import train


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(TrainConfig, description=__doc__)
    try:
        (cfg,) = parser.parse_args_into_dataclasses(args=argv)
    except ConfigError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint file is noise
    log = logging.getLogger("train")
    try:
        result = train(cfg)
    except (ConfigError, DataError, DataSourceError, HubUnavailableError, FileNotFoundError) as err:
        log.error("%s", err)
        return 1
    if result.results is not None:
        log.info("\n%s", format_final_table(result.results))
        log.info("Outputs in %s: model/, results.json, confusion_matrix.png, curves.png", result.output_dir)
        if result.results.get("wandb_sync"):
            log.info("Upload the offline W&B run with: %s", result.results["wandb_sync"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
