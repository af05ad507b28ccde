"""Precision as an evaluate module shipped in the package, so loading it needs no Hub.

Same interface as the Hub's evaluate-metric/precision.
"""

import datasets
import evaluate
from sklearn.metrics import precision_score


class Precision(evaluate.Metric):
    """Precision: true positives over predicted positives, per class or averaged."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Precision: true positives over predicted positives, per class or averaged.",
            citation="",
            inputs_description=(
                "predictions, references: class ids; labels, pos_label, average, sample_weight, "
                "zero_division: as in sklearn.metrics.precision_score."
            ),
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(
        self,
        predictions,
        references,
        labels=None,
        pos_label=1,
        average="binary",
        sample_weight=None,
        zero_division="warn",
    ) -> dict:
        score = precision_score(
            references,
            predictions,
            labels=labels,
            pos_label=pos_label,
            average=average,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        # A float for an average, a list of floats (one per label) for average=None.
        return {"precision": score.tolist() if average is None else float(score)}
