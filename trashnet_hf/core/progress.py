"""Progress that suits where it is shown: a tqdm bar on a terminal, plain log lines in a log file.

A bar redraws itself with carriage returns, which turn a log file (CI, ``nohup``, ``> train.log``) into
one unreadable line per bar. So off a terminal our own progress is a log line at most every
``PROGRESS_LOG_SECONDS`` and one at the end, and the libraries' bars (datasets' map, transformers'
"Loading weights" and "Writing model shards", huggingface_hub's downloads) are switched off, through their
own switches, by ``quiet_library_bars`` (called once, by ``cli.run``, for every command line).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

PROGRESS_LOG_SECONDS = 30.0  # off a terminal: at most one progress line this often (and one at the end)
_DATASETS_SWITCH = "HF_DATASETS_DISABLE_PROGRESS_BARS"


def quiet_library_bars() -> bool:
    """Switch off the progress bars of transformers, huggingface_hub and datasets when stderr is not a
    terminal; return whether they were switched off. A user's own ``HF_*_DISABLE_PROGRESS_BARS`` wins."""
    if sys.stderr.isatty():
        return False
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is None:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # huggingface_hub's bars; transformers reads this switch when imported
        if "transformers.utils.logging" in sys.modules:  # already imported: tell it too
            sys.modules["transformers.utils.logging"].disable_progress_bar()
    if os.environ.get(_DATASETS_SWITCH) is None:
        if "datasets" in sys.modules:
            sys.modules["datasets"].disable_progress_bars()
        else:  # read when datasets is imported; serving command lines never import it
            os.environ[_DATASETS_SWITCH] = "1"
    return True


class Progress:
    """Count ``done`` out of ``total``: a bar on a terminal; otherwise, with ``show``, a log line such as
    ``step 8/12 (67%)  loss 0.4  img/s 120`` at most every PROGRESS_LOG_SECONDS, and always at the end.

    ``show=False`` (a process other than the main one) displays nothing."""

    def __init__(self, total: int, unit: str, initial: int = 0, show: bool = True) -> None:
        self.total, self.unit, self.show = total, unit, show
        self.bar = tqdm(total=total, initial=initial, unit=unit, disable=not (show and sys.stderr.isatty()))
        self.last_line = -math.inf

    def update(self, done: int, values: dict[str, str] | None = None) -> None:
        """Move to ``done``; ``values`` (already formatted) go on the bar or the log line."""
        self.bar.update(done - self.bar.n)
        if values:
            self.bar.set_postfix(values, refresh=False)
        now = time.perf_counter()
        finished = done >= self.total
        if self.show and self.bar.disable and (finished or now - self.last_line >= PROGRESS_LOG_SECONDS):
            self.last_line = now
            shown = "".join(f"  {k} {v}" for k, v in (values or {}).items())
            percent = 100 * done / max(self.total, 1)
            logger.info("%s %d/%d (%.0f%%)%s", self.unit, done, self.total, percent, shown)

    def close(self) -> None:
        self.bar.close()
