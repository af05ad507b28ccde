"""What serving reads from a saved model without loading it: the low-confidence keys, their default, and
the error a model that cannot be loaded raises.

Apart from ``trashnet_hf.core.model`` (which re-exports all of it) because that module imports torch,
transformers and timm, and a Space serving an ONNX file installs none of them.
"""

from __future__ import annotations

from trashnet_hf.core.errors import UserError

# The app's "not sure" threshold on the calibrated top score, in config.json: training.calibration
# computes it on the validation split and writes both keys; serving reads them (and falls back to
# DEFAULT_LOW_CONFIDENCE, the value measured on one Lite0 run, for a model that has none).
THRESHOLD_KEY = "low_confidence_threshold"
THRESHOLD_RULE_KEY = "low_confidence_rule"  # one line: the rule and its parameters, or why the default
DEFAULT_LOW_CONFIDENCE = 0.6

# The out-of-distribution ("not waste") score, Mahalanobis on the stride-16 stage (trashnet_hf.core.ood):
# its class means and whitening matrix live in OOD_FILE beside config.json, and config.json holds these keys.
OOD_FILE = "ood.safetensors"
OOD_THRESHOLD_KEY = "ood_threshold"  # a score above it is foreign
OOD_LAYER_KEY = "ood_layer"  # the timm module whose pooled output is scored
OOD_RULE_KEY = "ood_rule"  # one line: how the threshold was set
OOD_METHOD_KEY = "ood_method"
OOD_METHOD = "mahalanobis"
OOD_KEYS = (OOD_THRESHOLD_KEY, OOD_LAYER_KEY, OOD_RULE_KEY, OOD_METHOD_KEY)


class ModelLoadError(UserError):
    """A model folder that cannot be loaded: missing, incomplete, corrupt, or with a config.json that
    disagrees with its weights. The message is one line naming the folder or file."""
