"""What every place that shows a prediction says and accepts: the Gradio app and the static page.

Plain data with no heavy import, so the static-Space build (hub wing) writes the same text and limits into
the page's model.json that the app shows and enforces.
"""

from __future__ import annotations

from PIL import Image

from trashnet_hf.core.decoding import MAX_ASPECT

# One line of advice per TrashNet class. Rules differ from town to town; the pages say so.
BIN_HINTS = {
    "cardboard": "Recycling (paper & card): flatten it, keep it dry; greasy pizza boxes go in general waste.",
    "glass": "Glass recycling (bottle bank): empty and rinse it; no window glass, mirrors or ceramics.",
    "metal": "Recycling (cans & tins): empty and rinse it; aerosols only when completely empty.",
    "paper": "Recycling (paper & card): clean and dry only; no tissues or food-stained paper.",
    "plastic": "Recycling (plastics), if your council takes this kind: empty and rinse it, lid on.",
    "trash": "General waste: this one is not recyclable at the kerb.",
}
# Shown instead of a label when the out-of-distribution score is over the model's threshold (core.ood):
# the photo is unlike the training photos, so any of the six names would be a confident guess at nothing.
FOREIGN_MESSAGE = "This does not look like one piece of waste from the six kinds."
FOREIGN_ADVICE = (
    "The model knows studio photos of one object on a plain background (cardboard, glass, metal, paper, "
    "plastic, trash); try a closer photo of one item."
)
MIN_SIDE = 32  # smaller images hold too little to recognise (and a 1x1 "photo" is usually a broken upload)
# Per upload (Gradio's max_file_size), and per data: URL once decoded. The pixels are bounded apart from
# the bytes (decoding.check_bounds, from the header): PIL's bomb limit (about 89 MP), MIN_SIDE, 1:20 sides.
MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # PIL's decompression-bomb limit (None: switched off)
MAX_SIDE_RATIO = MAX_ASPECT
