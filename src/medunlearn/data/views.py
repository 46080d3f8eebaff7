"""Task views: which labels a classifier is trained on.

* ``native``: MedMNIST's own classes. A set of positive (disease) classes may still be attached so
  that clinical metrics can be computed for a multi-class model.
* ``binary``: a clinical two-class view. Label 1 means disease (positive), label 0 means no disease,
  whatever the native coding is (BreastMNIST codes malignant as 0, so its binary view flips it).
* ``auto``: ``binary`` for datasets with a known clinical positive set (or when positive classes
  are given), ``native`` otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medunlearn.data.info import DEFAULT_POSITIVE_CLASSES, DatasetInfo
from medunlearn.errors import DataError

VIEWS = ("auto", "native", "binary")


@dataclass(frozen=True)
class TaskView:
    """How native labels map to the labels a model is trained on."""

    kind: str  # "native" or "binary"
    positive_classes: tuple[int, ...] | None  # native classes that mean disease
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def positive_labels(self) -> tuple[int, ...] | None:
        """Labels in the view's own label space that count as disease (None: not clinical)."""
        if self.kind == "binary":
            return (1,)
        return self.positive_classes

    def to_dict(self) -> dict:
        return {"kind": self.kind, "positive_classes": self.positive_classes,
                "num_classes": self.num_classes, "class_names": list(self.class_names)}

    def apply(self, native: np.ndarray, multilabel: bool) -> np.ndarray:
        """Map native labels ``(N, L)`` to view labels ``(N,)`` (int64)."""
        if self.kind == "native":
            return native[:, 0].astype(np.int64)
        pos = np.asarray(self.positive_classes)
        if multilabel:  # positive when any of the positive findings is present
            return (native[:, pos] > 0).any(axis=1).astype(np.int64)
        return np.isin(native[:, 0], pos).astype(np.int64)


def _class_list(info: DatasetInfo) -> str:
    return ", ".join(f"{i} {name}" for i, name in enumerate(info.labels))


def resolve_view(info: DatasetInfo, view: str = "auto",
                 positive_classes: Sequence[int] | None = None) -> TaskView:
    """Build the task view for a dataset, validating the positive classes.

    Raises:
        DataError: unknown view, positive class out of range, or a multi-label dataset without a
            binary view.
    """
    view = view.lower()
    if view not in VIEWS:
        raise DataError(f"Unknown view {view!r}; choose one of {', '.join(VIEWS)}.")
    if positive_classes is not None:
        positive_classes = tuple(sorted({int(c) for c in positive_classes}))
        if not positive_classes:
            raise DataError("--positive-classes is empty; give at least one class index.")
        bad = [c for c in positive_classes if not 0 <= c < info.num_classes]
        if bad:
            raise DataError(
                f"Positive class {bad[0]} is out of range for {info.flag}, whose classes are "
                f"{_class_list(info)}. Pass indices between 0 and {info.num_classes - 1}."
            )
    if view == "auto":
        known = positive_classes is not None or info.flag in DEFAULT_POSITIVE_CLASSES
        view = "binary" if known else "native"
    positives = positive_classes if positive_classes is not None else \
        DEFAULT_POSITIVE_CLASSES.get(info.flag)

    if view == "native":
        if info.multilabel:
            raise DataError(
                f"{info.flag} is multi-label ({info.task}); medunlearn trains single-label "
                "classifiers, so it needs a binary view: pass --view binary --positive-classes "
                f"with the findings that count as disease (classes: {_class_list(info)})."
            )
        return TaskView("native", positives, info.num_classes, info.labels)

    if positives is None:
        raise DataError(
            f"{info.flag} has no default disease classes, so a binary view needs "
            f"--positive-classes (classes: {_class_list(info)})."
        )
    if len(positives) == info.num_classes and not info.multilabel:
        raise DataError(
            f"Every class of {info.flag} was named positive, so the binary view would have no "
            "negative samples. Leave at least one class out of --positive-classes."
        )
    neg_names = [n for i, n in enumerate(info.labels) if i not in positives]
    pos_names = [info.labels[i] for i in positives]
    if info.multilabel:
        neg_names = ["none of: " + "; ".join(pos_names)]
    return TaskView("binary", positives, 2, ("; ".join(neg_names), "; ".join(pos_names)))
