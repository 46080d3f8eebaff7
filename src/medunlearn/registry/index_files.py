"""The registry's CSV files of training indices, read and written in one place.

The registry reads a run folder's ``manifest.csv`` (``index,sha256,label[,patient_id]``) and
``forget.csv`` (``index,...``), and writes a candidate's ``excluded.csv`` (``index,sha256,label``)
and the exported manifest (``index,sha256,label,forgotten_in,request_id``). Every one of them goes
through :func:`read_index_rows` or :func:`write_index_rows`: UTF-8, a header line, ``\\n`` line
ends, written atomically. The callers check the columns they need and word their own errors.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path


def read_index_rows(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """``(header, rows)`` of an index CSV, each row a ``{column: text}`` dict.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not UTF-8 text (``UnicodeDecodeError``).
        csv.Error: it is not CSV.
    """
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def write_index_rows(path: str | os.PathLike, header: Sequence[str],
                     rows: Iterable[Sequence]) -> Path:
    """Write ``header`` and ``rows`` (``None`` as an empty cell) atomically; returns the path."""
    from medunlearn.io import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(["" if v is None else v for v in r] for r in rows)
    return atomic_write_text(path, buf.getvalue())
