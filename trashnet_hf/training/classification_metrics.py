"""Classification metrics as one ``evaluate`` module shipped in the package, so loading it needs no Hub.

``evaluate.load(<this file>, config_name=NAME)`` gives the metric NAME (accuracy, precision, recall, f1
or confusion_matrix) with the inputs, options and result of the Hub's ``evaluate-metric/NAME``: sklearn's
function of that name computes it. Loaded by ``trashnet_hf.training.metrics.load_metric``, not imported.
"""

import datasets
import evaluate
from sklearn import metrics

# The per-label scores share sklearn's signature (labels, pos_label, average, sample_weight, zero_division).
PER_LABEL = {"precision": metrics.precision_score, "recall": metrics.recall_score, "f1": metrics.f1_score}
NAMES = ("accuracy", *PER_LABEL, "confusion_matrix")


class ClassificationMetric(evaluate.Metric):
    """One of NAMES, chosen by ``config_name``; predictions and references are class ids."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in NAMES:
            raise ValueError(f"config_name must be one of {', '.join(NAMES)}, got {self.config_name!r}")
        return evaluate.MetricInfo(
            description=f"{self.config_name} of class-id predictions against references (sklearn).",
            citation="",
            inputs_description=(
                f"predictions, references: class ids; other keywords as in sklearn.metrics' "
                f"{self.config_name}{'' if self.config_name == 'confusion_matrix' else '_score'}."
            ),
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, **options) -> dict:
        name = self.config_name
        if name == "accuracy":
            return {name: float(metrics.accuracy_score(references, predictions, **options))}
        if name == "confusion_matrix":
            return {name: metrics.confusion_matrix(references, predictions, **options).tolist()}
        score = PER_LABEL[name](references, predictions, **options)
        # A float for an average, a list of floats (one per label) for average=None.
        return {name: score.tolist() if options.get("average", "binary") is None else float(score)}
