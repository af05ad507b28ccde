"""``trashnet-hf data``: prepare and split the data, write the report and the manifest."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from trashnet_hf.core import cli
from trashnet_hf.core.config import DataConfig
from trashnet_hf.core.embedder import grouping_embedder
from trashnet_hf.core.errors import ConfigError
from trashnet_hf.data import prepare_data, write_outputs

logger = logging.getLogger("trashnet_hf.data")


# What a training run writes beside its data outputs (checkpointing.RUN_MARKERS; data knows no training).
TRAINING_OUTPUTS = ("results.json", "model", "checkpoints")


def run(cfg: DataConfig) -> int:
    found = [name for name in TRAINING_OUTPUTS if (Path(cfg.output_dir) / name).exists()]
    if found:  # there, split_manifest.csv is the record of the split the run's model was trained on
        raise ConfigError(
            f"--output-dir {cfg.output_dir} holds a training run ({', '.join(found)}); its "
            "split_manifest.csv and data_report.json record the split its model was trained on and are "
            "not replaced. Pass another --output-dir."
        )
    start = time.perf_counter()
    data = prepare_data(cfg, embedder=grouping_embedder(cfg))
    write_outputs(cfg.output_dir, data.report, data.manifest)
    r = data.report
    logger.info(
        "%d images, %d bad, %d duplicate groups (%s), %d label conflicts dropped, %d kept in %.1f s",
        r["num_images"],
        r["num_bad"],
        r["duplicate_groups"],
        r["grouping"]["method"],
        len(r["label_conflicts"]),
        r["num_kept"],
        time.perf_counter() - start,
    )
    for split, counts in r["splits"].items():
        logger.info("%-5s %5d  %s", split, sum(counts.values()), counts)
    logger.info("Wrote %s/data_report.json and %s/split_manifest.csv", cfg.output_dir, cfg.output_dir)
    return 0


def main(argv: list[str] | None = None, prog: str = "trashnet-hf data") -> int:
    return cli.run(DataConfig, run, argv, description=__doc__, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
