"""trashnet-hf: TrashNet image classification on the Hugging Face stack."""

from pathlib import Path

__version__ = "0.1.0"

# 420 real TrashNet photos (70 per class, MIT, credited in sample/CREDITS.md) shipped with the package:
# the quickstart's data, the ONNX parity check's fallback photos and the app's examples.
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"


def example_photo(label: str) -> Path:
    """The bundled photo the app and the Space show as ``label``'s example."""
    return SAMPLE_DIR / label / f"{label}1.jpg"
