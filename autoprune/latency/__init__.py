"""Measured cost: counted MACs/params and latency on the target device.

:func:`measure` returns a :class:`Cost` (:func:`time_alternating` times several models in
alternating rounds); :func:`build_table` measures a per-layer :class:`LatencyTable` that predicts
a plan's latency without building it, and :func:`fit_latency` fits a plan to a latency target on
it; :class:`LatencyCache` reuses timings of models with the
same architecture (:func:`shape_signature`), :class:`PreparedModels` their exported or compiled
copies; :func:`cpu_info` names the CPU they ran on. The
analytic cost of plans (no model built) is the engine's
:class:`~autoprune.engine.costmodel.CostModel`.
"""

from __future__ import annotations

from autoprune.latency.cost import Cost, LatencyCache, LatencyKey, LatencyTarget, shape_signature
from autoprune.latency.layer_table import TableGrid, build_table
from autoprune.latency.machine import cpu_info, cpu_model
from autoprune.latency.predictor import LatencyTable, fit_latency
from autoprune.latency.timing import PreparedModels, measure, time_alternating

__all__ = ["Cost", "LatencyCache", "LatencyKey", "LatencyTable", "LatencyTarget", "PreparedModels",
           "TableGrid", "build_table", "cpu_info", "cpu_model", "fit_latency", "measure",
           "shape_signature", "time_alternating"]
