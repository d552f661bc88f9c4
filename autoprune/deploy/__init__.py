"""Deployment: turn a searched candidate into files to ship, and shrink it further.

- :mod:`~autoprune.deploy.export`: ``export_trial``, one trial of a run as a checked file + metrics
  (``autoprune export``), rebuilt by :mod:`~autoprune.deploy.rebuild` and written by
  :mod:`~autoprune.deploy.formats` (``pt`` default / ``pt2`` recommended / ``torchscript`` legacy /
  ``onnx``, see :mod:`~autoprune.deploy.onnx_file`).
- :mod:`~autoprune.deploy.archive`: ``save_pruned`` / ``load_pruned``, the portable ``pt`` archive.
- :mod:`~autoprune.deploy.weights`: unstructured weight pruning and sparse checkpoints.
- :mod:`~autoprune.deploy.quantize`: int8 / fp16 / bf16 programs (``quantize()`` itself is
  ``autoprune.quantize`` or ``autoprune.deploy.quantize.quantize``: here the name is the module).
- :mod:`~autoprune.deploy.variants`: the hybrid and quantized variants ``export_trial`` measures.

Nothing heavy is imported with this package: each name loads its module on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoprune._lazy import lazy_getattr

_LAZY = {
    "ExportOptions": "autoprune.deploy.export",
    "ExportResult": "autoprune.deploy.export",
    "export_trial": "autoprune.deploy.export",
    "FORMATS": "autoprune.deploy.formats",
    "ONNX_TOLERANCE": "autoprune.deploy.formats",
    "builder_reference": "autoprune.deploy.archive",
    "load_pruned": "autoprune.deploy.archive",
    "save_pruned": "autoprune.deploy.archive",
    "QuantizedModel": "autoprune.deploy.quantize",
    "save_program": "autoprune.deploy.quantize",
    "SizeReport": "autoprune.deploy.weights",
    "WeightMask": "autoprune.deploy.weights",
    "load_sparse": "autoprune.deploy.weights",
    "mask_24": "autoprune.deploy.weights",
    "prune_weights": "autoprune.deploy.weights",
    "save_sparse": "autoprune.deploy.weights",
    "sparse_size": "autoprune.deploy.weights",
    "sparsity_schedule": "autoprune.deploy.weights",
    "to_semi_structured_24": "autoprune.deploy.weights",
}

__all__ = [
    "FORMATS",
    "ONNX_TOLERANCE",
    "ExportOptions",
    "ExportResult",
    "QuantizedModel",
    "SizeReport",
    "WeightMask",
    "builder_reference",
    "export_trial",
    "load_pruned",
    "load_sparse",
    "mask_24",
    "prune_weights",
    "save_program",
    "save_pruned",
    "save_sparse",
    "sparse_size",
    "sparsity_schedule",
    "to_semi_structured_24",
]

if TYPE_CHECKING:
    from autoprune.deploy.archive import builder_reference, load_pruned, save_pruned
    from autoprune.deploy.export import ExportOptions, ExportResult, export_trial
    from autoprune.deploy.formats import FORMATS, ONNX_TOLERANCE
    from autoprune.deploy.quantize import QuantizedModel, save_program
    from autoprune.deploy.weights import (
        SizeReport,
        WeightMask,
        load_sparse,
        mask_24,
        prune_weights,
        save_sparse,
        sparse_size,
        sparsity_schedule,
        to_semi_structured_24,
    )


__getattr__ = lazy_getattr(__name__, globals(), _LAZY)
