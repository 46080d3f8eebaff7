"""Dataset metadata, read from the ``medmnist`` package's ``INFO`` table.

Nothing here is hand-copied: labels, task type, channel count, split sizes, download URLs and
MD5 checksums all come from ``medmnist.INFO``. The only table kept in medunlearn is the clinical
one (which classes count as disease), because MedMNIST does not define it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache

from medunlearn.errors import DataError

#: Default disease ("positive") classes of the binary clinical views, in native label space.
#: A missed positive (false negative) is the costly error. BreastMNIST codes malignant as 0.
DEFAULT_POSITIVE_CLASSES: dict[str, tuple[int, ...]] = {
    "pneumoniamnist": (1,),  # pneumonia
    "breastmnist": (0,),  # malignant
    # actinic keratoses / intraepithelial carcinoma, basal cell carcinoma, melanoma
    "dermamnist": (0, 1, 4),
    "pathmnist": (8,),  # colorectal adenocarcinoma epithelium
}

SIZES: tuple[int, ...] = (28, 64, 128, 224)


@lru_cache(maxsize=1)
def _medmnist_info() -> dict:
    from medmnist.info import INFO

    return INFO


@lru_cache(maxsize=1)
def default_root() -> str:
    """medmnist's own default data folder (``~/.medmnist``)."""
    from medmnist.info import DEFAULT_ROOT

    return DEFAULT_ROOT


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of one MedMNIST 2D dataset."""

    flag: str
    python_class: str
    task: str
    labels: tuple[str, ...]
    n_channels: int
    n_samples: dict
    md5: dict  # size -> MD5 hex digest
    urls: dict  # size -> download URL
    license: str

    @property
    def multilabel(self) -> bool:
        return self.task.startswith("multi-label")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(sorted(self.md5))

    def file_name(self, size: int) -> str:
        """The file name medmnist uses for this dataset at ``size`` pixels."""
        return f"{self.flag}.npz" if size == 28 else f"{self.flag}_{size}.npz"


def dataset_flags() -> list[str]:
    """Every MedMNIST 2D dataset flag known to the installed ``medmnist`` package."""
    return sorted(flag for flag in _medmnist_info() if not flag.endswith("3d"))


def get_info(flag: str) -> DatasetInfo:
    """Return the metadata of a 2D MedMNIST dataset.

    Raises:
        DataError: The name is not a MedMNIST 2D dataset (the message lists the valid names).
    """
    if not isinstance(flag, str):
        raise DataError(f"A dataset name must be a string, got {flag!r}.")
    key = flag.strip().lower()
    info = _medmnist_info()
    if key.endswith("3d") and key in info:
        raise DataError(
            f"{flag!r} is a 3D MedMNIST dataset; medunlearn supports the 2D datasets: "
            f"{', '.join(dataset_flags())}."
        )
    if key not in info:
        close = difflib.get_close_matches(key, dataset_flags(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(
            f"Unknown dataset {flag!r}.{hint} Valid MedMNIST 2D datasets: "
            f"{', '.join(dataset_flags())}."
        )
    raw = info[key]
    md5 = {28: raw["MD5"]}
    urls = {28: raw.get("url")}
    for size in SIZES[1:]:
        if f"MD5_{size}" in raw:
            md5[size] = raw[f"MD5_{size}"]
            urls[size] = raw.get(f"url_{size}")
    labels = tuple(raw["label"][str(i)] for i in range(len(raw["label"])))
    return DatasetInfo(
        flag=key,
        python_class=raw["python_class"],
        task=raw["task"],
        labels=labels,
        n_channels=int(raw["n_channels"]),
        n_samples=dict(raw["n_samples"]),
        md5=md5,
        urls=urls,
        license=raw.get("license", ""),
    )
