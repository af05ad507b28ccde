"""Gradio Space for trashnet-hf. The demo arrives with its own issue; until then this explains itself."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    sys.exit("app.py: the Gradio demo is not built yet (see the project's issues); train with train.py.")
