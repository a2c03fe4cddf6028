"""What a churn model records of its aspect model, and how a labeler refuses answers that do not fit it."""

from __future__ import annotations

import numpy as np
import pytest

from models.aspect_scoring import CachedAspectLabeler
from models.lineage import AspectLineage, LineageError, check_lineage

LINEAGE = AspectLineage("models:/a/1", "d" * 64, True, ("billing", "network", "none"), ("billing", "network"))


class _Answers:
    """A stand-in aspect model answering fixed names (its predictions' `aspects`)."""

    def __init__(self, answers: list[str], labels: tuple[str, ...] = LINEAGE.labels) -> None:
        self.answers, self.labels = answers, labels
        self.digest, self.quantized = LINEAGE.artifact_digest, LINEAGE.quantized

    def predict(self, texts: list[str]):  # noqa: ANN201
        class Predictions:
            aspects = self.answers[: len(texts)]

        return Predictions()


def test_a_lineage_names_a_prefix_of_its_labels_and_round_trips():
    assert AspectLineage.from_dict(LINEAGE.to_dict()) == LINEAGE
    with pytest.raises(LineageError, match="must be the first of its labels"):
        AspectLineage("u", "d" * 64, True, ("none", "billing"), ("billing",))
    with pytest.raises(LineageError, match="must be the first"):
        AspectLineage("u", "d" * 64, True, ("none",), ())
    with pytest.raises(LineageError, match="not one string"):
        AspectLineage("u", "d" * 64, True, "billing", "billing")


def test_a_model_with_other_labels_is_not_the_recorded_one():
    check_lineage(LINEAGE, _Answers([]), what="aspects")
    with pytest.raises(LineageError, match="answers"):
        check_lineage(LINEAGE, _Answers([], labels=("network", "billing", "none")), what="aspects")


def test_the_labeler_refuses_unknown_answers_and_corrupt_cache_positions(tmp_path):
    labeler = CachedAspectLabeler(LINEAGE, tmp_path, model=_Answers(["billing", "delivery"]))
    with pytest.raises(LineageError, match=r"answered \['delivery'\]"):
        labeler.label_new(["my bill", "where is my parcel"])
    assert labeler.labels_of(np.array([0.0, np.nan, 2.0])) == ["billing", None, "none"]
    for bad in (-1.0, 3.0, 0.5, np.inf):
        with pytest.raises(LineageError, match="none of the 3 labels"):
            labeler.labels_of(np.array([bad]))
    fine = CachedAspectLabeler(LINEAGE, tmp_path, model=_Answers(["network", "none"]))
    assert fine(["  slow   internet ", "hello"]) == ["network", "none"]
    assert fine([None, "hello"]) == [None, "none"]  # cached now: the model is not asked again
