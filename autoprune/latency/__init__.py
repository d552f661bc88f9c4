"""Measured cost: counted MACs/params and latency on the target device.

:func:`measure` returns a :class:`Cost` (:func:`time_alternating` times several models in
alternating rounds); :class:`LatencyCache` reuses timings of models with the
same architecture (:func:`shape_signature`); :func:`cpu_info` names the CPU they ran on. The
analytic cost of plans (no model built) is the engine's
:class:`~autoprune.engine.costmodel.CostModel`.
"""

from __future__ import annotations

from autoprune.latency.cost import Cost, LatencyCache, LatencyKey, LatencyTarget, shape_signature
from autoprune.latency.machine import cpu_info, cpu_model
from autoprune.latency.timing import measure, time_alternating

__all__ = ["Cost", "LatencyCache", "LatencyKey", "LatencyTarget", "cpu_info", "cpu_model",
           "measure", "shape_signature", "time_alternating"]
