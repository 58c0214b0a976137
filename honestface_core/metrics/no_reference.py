"""The no-reference quality metrics of the paper's table (MUSIQ, C-IQA = CLIP-IQA, M-IQA = MANIQA): one table of
what exists, one loader. Each metric scores single images (higher is better) and loads only local weight files
(see :mod:`.iqa_files`); a missing file raises :class:`~.image_quality.MetricUnavailable` naming it.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Sequence

import torch

from honestface_core.errors import HonestFaceError
from honestface_core.metrics.image_quality import MetricUnavailable

#: report column -> (module in this package, class, keyword that selects the variant, variants (first = default))
NO_REFERENCE_METRICS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "MUSIQ": ("iqa_musiq", "MUSIQMetric", "dataset", ("koniq10k", "ava", "spaq", "paq2piq")),
    "C-IQA": ("iqa_clipiqa", "CLIPIQAMetric", "variant", ("clipiqa", "clipiqa+")),
    "M-IQA": ("iqa_maniqa", "MANIQAMetric", "dataset", ("koniq", "pipal", "kadid")),
}


def metric_choices() -> list[str]:
    """``"<column> (<variant>)"`` for every metric and variant, defaults first (the node's menu)."""
    return [f"{col} ({v})" for col, (_, _, _, variants) in NO_REFERENCE_METRICS.items() for v in variants]


def parse_choice(choice: str) -> tuple[str, str]:
    """``"MUSIQ (ava)"`` -> ``("MUSIQ", "ava")``; a bare column name gives its default variant."""
    column, _, rest = choice.partition(" (")
    spec = NO_REFERENCE_METRICS.get(column)
    variant = rest.rstrip(")") if rest else (spec[3][0] if spec else "")
    if spec is None or variant not in spec[3]:
        raise HonestFaceError("quality metric", f"{choice!r} is unknown", f"Use one of: {', '.join(metric_choices())}")
    return column, variant


def describe(metric: Any) -> str:
    """``"<column> (<variant>)"`` of a loaded metric, as :func:`metric_choices` names it."""
    keyword = NO_REFERENCE_METRICS[metric.name][2]
    return f"{metric.name} ({getattr(metric, keyword)})"


def load_no_reference_metric(choice: str, models_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                             path: str | os.PathLike | None = None) -> Any:
    """Load ``choice`` (``"MUSIQ"``, ``"M-IQA (pipal)"``, ...) from ``path`` or its default file under ``models_dir``.

    Raises:
        MetricUnavailable: its weight file is missing (the message says which file and where to put it).
        HonestFaceError: unknown metric, or a file in the wrong format.
    """
    column, variant = parse_choice(choice)
    module, cls_name, keyword, _ = NO_REFERENCE_METRICS[column]
    cls = getattr(importlib.import_module(f"{__package__}.{module}"), cls_name)
    return cls.load(models_dir=models_dir, device=device, path=path, **{keyword: variant})


def load_available(models_dir: str | os.PathLike | None, device: str | torch.device = "cpu",
                   choices: Sequence[str] | None = None) -> tuple[list[Any], list[str]]:
    """The metrics of ``choices`` (default: every column, default variants) whose files are present, and a
    ``skipped: ...`` line for each other one."""
    metrics, skipped = [], []
    for column in NO_REFERENCE_METRICS if choices is None else choices:
        try:
            metrics.append(load_no_reference_metric(column, models_dir, device))
        except MetricUnavailable as err:
            skipped.append(str(err))
    return metrics, skipped


__all__ = ["NO_REFERENCE_METRICS", "describe", "load_available", "load_no_reference_metric", "metric_choices", "parse_choice"]
