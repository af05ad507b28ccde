"""``python -m trashnet_hf.data``: prepare and split the data, write the report and the manifest."""

from __future__ import annotations

import logging
import sys
import time

from transformers import HfArgumentParser

from trashnet_hf.config import ConfigError, DataConfig
from trashnet_hf.data import DataError, DataSourceError, prepare_data, write_outputs
from trashnet_hf.hub import HubUnavailableError

logger = logging.getLogger("trashnet_hf.data")


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(DataConfig, description=__doc__)
    try:
        (cfg,) = parser.parse_args_into_dataclasses(args=argv)
    except ConfigError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        data = prepare_data(cfg)
    except (DataError, DataSourceError, HubUnavailableError) as err:
        logger.error("%s", err)
        return 1
    write_outputs(cfg.output_dir, data.report, data.manifest)
    r = data.report
    logger.info(
        "%d images, %d bad, %d duplicate groups, %d label conflicts dropped, %d kept in %.1f s",
        r["num_images"],
        r["num_bad"],
        r["duplicate_groups"],
        len(r["label_conflicts"]),
        r["num_kept"],
        time.perf_counter() - start,
    )
    for split, counts in r["splits"].items():
        logger.info("%-5s %5d  %s", split, sum(counts.values()), counts)
    logger.info("Wrote %s/data_report.json and %s/split_manifest.csv", cfg.output_dir, cfg.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
