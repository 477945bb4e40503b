"""math_accuracy: is the last number of a model's answer the gold number? (MGSM / MSVAMP / MAPO convention)"""

import datasets
import evaluate

from langneurons.prompts import TOLERANCE, is_correct

_DESCRIPTION = """The share of predictions whose last number equals the reference number (absolute difference at most
`tolerance`, 1e-3 by default as in MAPO: ``langneurons.prompts.is_correct``). Numbers may be written with thousands separators ("2,125")."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated answers (str).
    references: list of gold numbers (float).
    tolerance: largest absolute difference counted as correct (default 1e-3).
Returns:
    accuracy: correct / total (0.0 when there are no predictions),
    correct: number of correct predictions,
    total: number of predictions.
Examples:
    >>> metric = evaluate.load("path/to/math_accuracy")
    >>> metric.compute(predictions=["3 + 4 = 7. The answer is 7."], references=[7.0])
    {'accuracy': 1.0, 'correct': 1, 'total': 1}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MathAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references, tolerance=TOLERANCE):
        correct = sum(is_correct(prediction, reference, tolerance)
                      for prediction, reference in zip(predictions, references))
        total = len(predictions)
        return {"accuracy": correct / total if total else 0.0, "correct": correct, "total": total}
