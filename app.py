"""The trashnet-hf demo: a Gradio app, and the entry point of the Hugging Face Space.

    python app.py                              # the newest local training output (outputs/model)
    python app.py --model outputs/model --port 7860
    MODEL_ID=user/trashnet-resnet18 python app.py

Every flag is listed by --help. The model comes from --model, else $MODEL_ID, else model_id.txt next to
this file (the Space's), else the newest outputs/*/model. The code is trashnet_hf.serving.app.
"""

from __future__ import annotations

import sys
from pathlib import Path

from trashnet_hf.serving.app import main

if __name__ == "__main__":
    sys.exit(main(app_dir=Path(__file__).resolve().parent))
