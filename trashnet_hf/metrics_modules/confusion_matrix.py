"""Confusion matrix as an evaluate module shipped in the package, so loading it needs no Hub.

Same interface as the Hub's evaluate-metric/confusion_matrix.
"""

import datasets
import evaluate
from sklearn.metrics import confusion_matrix


class ConfusionMatrix(evaluate.Metric):
    """Counts of (reference, prediction) pairs: rows are references, columns predictions."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Counts of (reference, prediction) pairs; rows are references, columns predictions.",
            citation="",
            inputs_description=(
                "predictions, references: class ids; labels: the row/column order (pass every class so "
                "classes absent from the inputs still get a row); sample_weight, normalize: as in sklearn."
            ),
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, labels=None, sample_weight=None, normalize=None) -> dict:
        matrix = confusion_matrix(
            references, predictions, labels=labels, sample_weight=sample_weight, normalize=normalize
        )
        return {"confusion_matrix": matrix.tolist()}
