"""In-memory datasets: whole splits as tensors, subsets as index tensors.

Every source (MedMNIST ``.npz`` files, CSV manifests, class folders, DICOM, arrays given in
Python) ends in the same :class:`Dataset`: ``uint8`` images (N, C, H, W) per split, labels in a
task view's label space, and per image a stable identity (a SHA-256), a patient id and metadata
columns (sex, age band, view, ...). Images stay ``uint8`` in memory (a 224 px set would not fit
as float) and are converted, augmented and normalised a batch at a time.

Identity: for MedMNIST the SHA-256 of an image's stored bytes (the ``uint8`` array in (H, W) or
(H, W, C) layout, C-contiguous) and one patient per image; for file sources the SHA-256 of the
source file and the patient id of its manifest row. A deletion request can name either.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medunlearn.config import DataConfig
from medunlearn.data.augment import POLICIES, augment_batch
from medunlearn.data.files import check_md5, locate, read_npz
from medunlearn.data.info import DatasetInfo, get_info
from medunlearn.data.views import TaskView, resolve_view
from medunlearn.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split held in memory."""

    name: str
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64, in the view's label space
    native_labels: np.ndarray  # (N, L) labels as stored in the file
    source_index: np.ndarray  # (N,) row of each sample in the source's split
    _hashes: list[str] | None = field(default=None, repr=False)
    # (N,) patient id of each image; None: one patient per image (MedMNIST)
    patient_ids: np.ndarray | None = None
    # column name -> (N,) values as strings (sex, age band, view, site, ...)
    metadata: dict[str, np.ndarray] = field(default_factory=dict)
    _pixel_hashes: list[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def patients(self) -> np.ndarray:
        """Patient id of each image (``<split>-<row>`` where the source has one per image)."""
        if self.patient_ids is None:
            return np.array([f"{self.name}-{int(i)}" for i in self.source_index], dtype=object)
        return self.patient_ids

    def __repr__(self) -> str:
        """One line: name, size, image shape, label counts, patients (never the tensors)."""
        counts = np.bincount(self.labels.numpy(), minlength=2).tolist() if len(self) else []
        shape = "x".join(map(str, self.images.shape[1:]))
        who = ("one patient per image" if self.patient_ids is None
               else f"{len(set(self.patient_ids.tolist()))} patients")
        return (f"Split({self.name!r}: {len(self)} images of {shape}, labels {counts}, "
                f"{who})")

    def take(self, keep: np.ndarray) -> Split:
        """The samples at positions ``keep`` (a new split of the same name)."""
        keep = np.asarray(keep, dtype=np.int64)
        t = torch.from_numpy(keep)
        return Split(self.name, self.images[t].contiguous(), self.labels[t].contiguous(),
                     self.native_labels[keep], self.source_index[keep],
                     None if self._hashes is None else [self._hashes[i] for i in keep],
                     None if self.patient_ids is None else self.patient_ids[keep],
                     {k: v[keep] for k, v in self.metadata.items()})

    @property
    def hashes(self) -> list[str]:
        """SHA-256 identity of each image (for MedMNIST its stored bytes; computed once)."""
        if self._hashes is None:
            hwc = self.images.permute(0, 2, 3, 1)  # back to the stored (N, H, W, C) layout
            if hwc.shape[-1] == 1:
                hwc = hwc[..., 0]
            arr = np.ascontiguousarray(hwc.numpy())
            self._hashes = [hashlib.sha256(a.tobytes()).hexdigest() for a in arr]
        return self._hashes

    @property
    def pixel_hashes(self) -> list[str]:
        """SHA-256 of each image as held in memory (shape and pixels), computed once. Unlike
        :attr:`hashes` (a file source's identity is its file) it changes with the preprocessing
        (size, channels, windowing), so it can key what a network computed from the pixels."""
        if self._pixel_hashes is None:
            shape = "x".join(map(str, self.images.shape[1:])).encode()
            arr = np.ascontiguousarray(self.images.numpy())
            self._pixel_hashes = [hashlib.sha256(shape + a.tobytes()).hexdigest() for a in arr]
        return self._pixel_hashes


LOCATION_KEYS = ("data_root", "download", "verify_md5", "cache_dir")


@dataclass
class Dataset:
    """A labelled image dataset under a task view, every split in memory.

    Attributes:
        name: Short name used in messages and reports (a MedMNIST flag, or the manifest's name).
        view: How native labels map to the trained labels, and which labels mean disease.
        splits: ``train``, ``val`` and ``test`` (:data:`SPLITS`).
        augment: Augmentation policy of the training recipe (``none``, ``basic``, ``strong``).
        source: A JSON-able record of how to load the same data again (``source`` names the
            loader; see :mod:`medunlearn.data.sources`). Run folders store it as ``data``.
        info, path, md5: MedMNIST metadata, file and checksum (None for other sources).
    """

    name: str
    view: TaskView
    splits: dict[str, Split]
    augment: str = "basic"
    source: dict = field(default_factory=lambda: {"source": "arrays"})
    info: DatasetInfo | None = None
    path: Path | None = None
    md5: str | None = None

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise DataError(f"Dataset {self.name!r} has no {', '.join(missing)} split; every "
                            f"dataset needs {', '.join(SPLITS)}.")
        if self.augment not in POLICIES:
            raise DataError(f"Unknown augmentation {self.augment!r}; choose one of {POLICIES}.")
        shapes = {tuple(sp.images.shape[1:]) for sp in self.splits.values()}
        if len(shapes) != 1:
            raise DataError(f"The splits of {self.name!r} hold images of different shapes "
                            f"{sorted(shapes)}; resize them to one size (e.g. --size 64).")

    @property
    def train(self) -> Split:
        return self.splits["train"]

    @property
    def val(self) -> Split:
        return self.splits["val"]

    @property
    def test(self) -> Split:
        return self.splits["test"]

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def num_classes(self) -> int:
        return self.view.num_classes

    @property
    def size(self) -> int:
        """Image height in pixels (images are square for every built-in source)."""
        return int(self.train.images.shape[2])

    @property
    def metadata_columns(self) -> list[str]:
        """Metadata columns present in every split (subgroup analysis uses these)."""
        cols = [set(sp.metadata) for sp in self.splits.values()]
        return sorted(set.intersection(*cols)) if cols else []

    def identity(self) -> dict:
        """What decides which samples and labels a model sees (not where they live)."""
        d = {k: v for k, v in self.source.items() if k not in LOCATION_KEYS}
        if d.get("source", "medmnist") == "arrays":
            h = hashlib.sha256()
            for s in SPLITS:
                h.update(s.encode())
                for x in self.splits[s].hashes:
                    h.update(x.encode())
                h.update(self.splits[s].labels.numpy().tobytes())
            d["content_sha256"] = h.hexdigest()
        return d

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images in [0, 1]."""
        x = self.train.images.float().div_(255)
        return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()

    def __repr__(self) -> str:
        """A short summary (name, splits and sizes, channels, image size, label counts,
        patients), never the tensors: ``print(data)`` is readable."""
        names = ", ".join(f"{i} {n}" for i, n in enumerate(self.view.class_names))
        lines = [f"Dataset {self.name!r} ({self.source.get('source', 'medmnist')}, "
                 f"{self.view.kind} view: {names}): {self.in_channels} channel(s), "
                 f"{self.size}x{int(self.train.images.shape[3])} pixels"]
        for s in SPLITS:
            sp = self.splits[s]
            counts = np.bincount(sp.labels.numpy(), minlength=self.num_classes).tolist()
            who = ("one patient per image" if sp.patient_ids is None
                   else f"{len(set(sp.patient_ids.tolist()))} patients")
            lines.append(f"  {s:<5} {len(sp):>7} images  labels {counts}  {who}")
        return "\n".join(lines)

    def describe(self) -> dict:
        """A JSON-able summary recorded with every run."""
        counts = {s: np.bincount(self.splits[s].labels.numpy(), minlength=self.num_classes).tolist()
                  for s in SPLITS}
        out = {
            "dataset": self.name, "source": self.source.get("source", "medmnist"),
            "size": self.size, "channels": self.in_channels,
            "task": self.info.task if self.info else "single-label",
            "view": self.view.to_dict(), "file": str(self.path) if self.path else None,
            "md5": self.md5, "n_samples": {s: len(self.splits[s]) for s in SPLITS},
            "class_counts": counts,
        }
        if any(sp.patient_ids is not None for sp in self.splits.values()):
            out["n_patients"] = {s: len(set(self.splits[s].patients.tolist())) for s in SPLITS}
        if self.metadata_columns:
            out["metadata_columns"] = self.metadata_columns
        return out


#: The name used before other sources existed; the same class.
MedDataset = Dataset


def from_record(cls, record: Mapping):
    """Build a config dataclass from a ``data`` record, ignoring its ``source`` key."""
    from medunlearn.config import from_dict

    return from_dict(cls, {k: v for k, v in record.items() if k != "source"},
                     where="the data record")


def _subset(split: Split, limit: int | None, seed: int) -> Split:
    if limit is None or limit >= len(split):
        return split
    if limit <= 0:
        raise DataError(f"A sample limit must be positive, got {limit}.")
    rng = np.random.default_rng(seed)
    return split.take(np.sort(rng.choice(len(split), size=limit, replace=False)))


def load_medmnist(config: DataConfig | None = None, *, seed: int = 0, **overrides) -> Dataset:
    """Load a MedMNIST 2D dataset into memory under a task view.

    Args:
        config: What to load; keyword ``overrides`` replace its fields
            (``load_medmnist(dataset="breastmnist", view="binary")``).
        seed: Seeds the choice of subsets when ``train_limit``/``eval_limit`` are set.

    Raises:
        DataError: unknown dataset, missing/corrupt/wrong-checksum file, bad view.
    """
    config = dataclasses.replace(config or DataConfig(), **overrides)
    info = get_info(config.dataset)
    config = dataclasses.replace(config, dataset=info.flag)
    if config.augment not in POLICIES:
        raise DataError(f"Unknown augmentation {config.augment!r}; choose one of {POLICIES}.")
    view = resolve_view(info, config.view, config.positive_classes)
    config = dataclasses.replace(config, view=view.kind, positive_classes=view.positive_classes)
    path = locate(info, config.size, config.data_root, download=config.download)
    md5 = check_md5(path, info.md5[config.size]) if config.verify_md5 else None
    raw = read_npz(path, info, config.size)
    splits = {}
    for name in SPLITS:
        r = raw[name]
        imgs = r.images if r.images.ndim == 4 else r.images[..., None]  # (N, H, W, C)
        images = torch.from_numpy(np.ascontiguousarray(imgs.transpose(0, 3, 1, 2)))
        labels = torch.from_numpy(view.apply(r.labels, info.multilabel))
        split = Split(name, images, labels, r.labels, np.arange(len(labels)))
        limit = config.train_limit if name == "train" else config.eval_limit
        splits[name] = _subset(split, limit, seed + SPLITS.index(name))
    return Dataset(info.flag, view, splits, augment=config.augment,
                   source={"source": "medmnist", **dataclasses.asdict(config)},
                   info=info, path=path, md5=md5)


def _as_uint8_images(images, where: str) -> torch.Tensor:
    """(N, C, H, W) uint8 from arrays in NCHW, NHWC (C <= 4) or NHW layout, uint8 or [0, 1]."""
    x = torch.as_tensor(np.asarray(images))
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"{where}: images must have shape (N, C, H, W), (N, H, W, C) or "
                        f"(N, H, W); got {tuple(x.shape)}.")
    if x.shape[1] > 4 and x.shape[-1] <= 4:
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not torch.is_floating_point(x):
        raise DataError(f"{where}: images must be uint8 (0..255) or float in [0, 1]; got "
                        f"{x.dtype}.")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise DataError(f"{where}: float images must lie in [0, 1] (got {float(x.min()):.3g}.."
                        f"{float(x.max()):.3g}); divide by 255 or pass uint8.")
    return x.mul(255).round_().to(torch.uint8).contiguous()


def from_arrays(splits: Mapping[str, Mapping], *, name: str = "arrays",
                num_classes: int | None = None, positive_labels: Sequence[int] | None = None,
                class_names: Sequence[str] | None = None, augment: str = "basic",
                source: dict | None = None) -> Dataset:
    """Build a :class:`Dataset` from tensors or arrays held in Python.

    Args:
        splits: ``{"train": {...}, "val": {...}, "test": {...}}``; each holds ``images``
            ((N, C, H, W), (N, H, W, C) or (N, H, W); uint8 or float in [0, 1]) and ``labels``
            ((N,) integers in ``0..num_classes-1``), optionally ``patient_ids`` ((N,) strings)
            and ``metadata`` (column name -> (N,) values, e.g. ``{"sex": [...]}``).
        name: Name used in messages and reports.
        num_classes: Number of classes (default: the largest label + 1).
        positive_labels: Labels that mean disease (clinical metrics and SalUn-CRA); for two
            classes the default is ``(1,)``.
        class_names: Names of the classes (default: ``"0"``, ``"1"``, ...).
        augment: Augmentation policy used when training on these data.
        source: Record of where the data came from (file sources fill it in).

    Raises:
        DataError: a missing split, mismatched lengths, bad shapes or labels out of range.
    """
    built: dict[str, Split] = {}
    k_max = 0
    for s in SPLITS:
        if s not in splits:
            raise DataError(f"from_arrays needs a {s!r} split (with 'images' and 'labels'); "
                            f"got {sorted(splits)}.")
        part = splits[s]
        unknown = set(part) - {"images", "labels", "patient_ids", "metadata", "hashes"}
        if unknown:
            raise DataError(f"Split {s!r} has unknown field(s) {sorted(unknown)}; use images, "
                            "labels, patient_ids, metadata, hashes.")
        images = _as_uint8_images(part["images"], f"split {s!r}")
        labels = torch.as_tensor(np.asarray(part["labels"]))
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"Split {s!r}: labels must be a vector with one entry per image "
                            f"({len(images)}); got shape {tuple(labels.shape)}.")
        if labels.is_floating_point():
            if not torch.equal(labels, labels.round()):
                raise DataError(f"Split {s!r}: labels must be whole class indices; found "
                                "fractional values.")
        labels = labels.long()
        if len(labels) and int(labels.min()) < 0:
            raise DataError(f"Split {s!r}: labels must be class indices >= 0.")
        k_max = max(k_max, int(labels.max()) + 1 if len(labels) else 0)
        n = len(labels)
        pids = part.get("patient_ids")
        if pids is not None:
            pids = np.asarray([str(p) for p in pids], dtype=object)
            if len(pids) != n:
                raise DataError(f"Split {s!r}: {len(pids)} patient ids for {n} images.")
        meta = {}
        for col, values in (part.get("metadata") or {}).items():
            vals = np.asarray(["" if v is None else str(v) for v in values], dtype=object)
            if len(vals) != n:
                raise DataError(f"Split {s!r}: metadata column {col!r} has {len(vals)} values "
                                f"for {n} images.")
            meta[str(col)] = vals
        hashes = part.get("hashes")
        if hashes is not None and len(hashes) != n:
            raise DataError(f"Split {s!r}: {len(hashes)} hashes for {n} images.")
        built[s] = Split(s, images, labels, labels.numpy()[:, None].copy(), np.arange(n),
                         list(hashes) if hashes is not None else None, pids, meta)
    k = num_classes if num_classes is not None else max(k_max, 2)
    if k_max > k:
        raise DataError(f"Labels go up to {k_max - 1} but num_classes is {k}.")
    for s in SPLITS:
        if s == "train" and len(built[s]) == 0:
            raise DataError("The training split is empty; give at least one image per class.")
    names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(k))
    if len(names) != k:
        raise DataError(f"{len(names)} class names for {k} classes.")
    if positive_labels is None and k == 2:
        positive_labels = (1,)
    pos = tuple(sorted({int(p) for p in positive_labels})) if positive_labels else None
    if pos and not all(0 <= p < k for p in pos):
        raise DataError(f"Positive labels {pos} are outside 0..{k - 1}.")
    kind = "binary" if k == 2 and pos == (1,) else "native"
    view = TaskView(kind, pos, k, names)
    return Dataset(name, view, built, augment=augment,
                   source=dict(source) if source else {"source": "arrays", "name": name})


def iterate_batches(split: Split, indices: torch.Tensor | None = None, *, batch_size: int = 256,
                    shuffle: bool = False, generator: torch.Generator | None = None,
                    augment: str = "none", drop_last: bool = False,
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(images, labels, indices)`` batches from a split.

    Images come out as float in [0, 1], shape (B, C, H, W), augmented by ``augment``; the model
    normalises them itself. ``indices`` selects a subset (e.g. a forget or retain set).
    """
    idx = (torch.arange(len(split)) if indices is None
           else torch.as_tensor(indices, dtype=torch.long))
    if shuffle:
        if generator is None:
            raise ValueError("shuffle=True needs an explicit generator for reproducibility")
        idx = idx[torch.randperm(len(idx), generator=generator)]
    n = len(idx)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        b = idx[start:start + batch_size]
        x = split.images[b].float().div_(255)
        if augment != "none":
            x = augment_batch(x, augment, generator)
        yield x, split.labels[b], b
