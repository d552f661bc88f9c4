"""Measuring a :class:`~autoprune.latency.predictor.LatencyTable`: each conv/linear layer timed
standalone at a grid of widths, the rest of the network calibrated on measured models.

:func:`build_table` reads each traced layer call and the channel dims its widths follow from the
engine (:meth:`~autoprune.engine.PrunableModel.layer_dims`), times each distinct layer
configuration once per grid point on the target device and runtime (in ONNX Runtime as a one-node
graph, also one input channel narrower where the runtime is slow off a multiple of 8), and fits
the rest (``a + b x activations``) exactly on the dense model and by least squares on uniform
plans.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from autoprune.latency.cost import LatencyTarget
from autoprune.latency.predictor import LatencyTable, LayerLut
from autoprune.plan import PruningPlan

if TYPE_CHECKING:
    from torch import nn

    from autoprune.engine.analysis import PrunableModel

__all__ = ["FRACTIONS", "TableGrid", "build_table"]

#: Fractions of each layer's dense width its table is timed at.
FRACTIONS: tuple[float, ...] = (0.125, 0.25, 0.5, 0.75, 1.0)


class _Layer(NamedTuple):
    """One conv/linear call: name, config, dims (-1: depthwise input), positions/channel."""

    name: str
    config: str  # JSON
    in_dim: int
    out_dim: int
    positions: float


def _layer_calls(analysis: PrunableModel, batch: int
                 ) -> tuple[list[_Layer], np.ndarray, np.ndarray]:
    """The conv/linear calls of the trace, with the cost model's dims their widths follow."""
    from torch import nn

    calls, dense, removal = analysis.layer_dims()
    per = max(1, analysis.cost_model.batch)
    layers = []
    for call in calls:
        m = call.module
        conv = isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        cin, cout = (m.in_channels, m.out_channels) if conv else (m.in_features, m.out_features)
        shape = (call.in_shape[0] // per * batch, *call.in_shape[1:])
        config: dict[str, Any] = {"kind": f"Conv{len(m.kernel_size)}d" if conv else "Linear",
                                  "in": cin, "out": cout, "shape": list(shape),
                                  "bias": m.bias is not None}
        if conv:
            config.update(kernel=list(m.kernel_size), stride=list(m.stride),
                          padding=m.padding if isinstance(m.padding, str) else list(m.padding),
                          dilation=list(m.dilation), groups=m.groups,
                          depthwise=call.in_dim == -1)
        layers.append(_Layer(call.name, json.dumps(config, sort_keys=True), call.in_dim,
                             call.out_dim, float(np.prod(call.out_shape)) / cout / per * batch))
    return layers, dense, removal


def _grid(dense: int, varies: bool, quantum: int, fractions: Sequence[float]) -> tuple[int, ...]:
    grid = {max(quantum, round(f * dense / quantum) * quantum) for f in fractions}
    return tuple(sorted(grid | {dense})) if varies else (dense,)


def _module(config: Mapping[str, Any], kin: int, kout: int) -> nn.Module:
    from torch import nn

    if config["kind"] == "Linear":
        return nn.Linear(kin, kout, bias=config["bias"])
    conv = getattr(nn, config["kind"])
    groups = kout if config["depthwise"] else config["groups"]
    return conv(kout if config["depthwise"] else kin, kout, config["kernel"],
                stride=config["stride"], padding=config["padding"], dilation=config["dilation"],
                groups=groups, bias=config["bias"])


@dataclass(frozen=True)
class _Clock:
    """How entries are timed: device, runtime, dtype, the seconds each sample lasts and how
    many; a timing is the fastest sample (the least disturbed by other jobs on the machine)."""

    device: str
    runtime: str
    dtype: str
    sample_s: float = 0.002
    samples: int = 5

    def time(self, model: nn.Module, inputs: Any, config: Mapping[str, Any] | None = None
             ) -> float:
        """ms of one run of ``model`` on ``inputs`` in the runtime (one layer ``config``: in
        ONNX Runtime as a one-node graph, as exporting each would take most of a second)."""
        import torch

        from autoprune.engine.inputs import to_device
        from autoprune.latency.runtimes import prepare

        model = model.to(device=self.device, dtype=getattr(torch, self.dtype)).eval()
        inputs = to_device(inputs, self.device, getattr(torch, self.dtype))
        with torch.inference_mode():
            run = _onnx_layer(model, inputs, config) if config is not None and \
                self.runtime == "onnxruntime" else prepare(model, inputs, self.runtime).run
            step = (lambda: (run(), torch.cuda.synchronize())) \
                if self.device.startswith("cuda") else run
            step()
            start = time.perf_counter()
            step()
            number = max(1, int(self.sample_s / max(time.perf_counter() - start, 1e-7)))
            times = [_loop(step, number) for _ in range(self.samples)]
        return min(times) * 1e3


def _loop(step: Callable[[], Any], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        step()
    return (time.perf_counter() - start) / number


def _onnx_layer(m: nn.Module, x: Any, config: Mapping[str, Any]) -> Callable[[], Any]:
    from onnx import TensorProto, helper, numpy_helper

    from autoprune.deploy.onnx_file import ort_session
    linear, w = config["kind"] == "Linear", m.weight.detach().cpu().numpy()
    names = ["x", "w", "b"][:3 if config["bias"] else 2]
    inits = [numpy_helper.from_array(w.T if linear else w, "w")] + ([numpy_helper.from_array(
        m.bias.detach().cpu().numpy(), "b")] if config["bias"] else [])
    if linear:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["z" if config["bias"] else "y"]),
                 helper.make_node("Add", ["z", "b"], ["y"])][:len(names) - 1]
    else:
        pad = config["padding"]
        attrs = {"auto_pad": "VALID" if pad == "valid" else "SAME_UPPER"} if \
            isinstance(pad, str) else {"pads": [*pad, *pad]}
        nodes = [helper.make_node("Conv", names, ["y"], kernel_shape=config["kernel"],
                                  strides=config["stride"], group=m.groups,
                                  dilations=config["dilation"], **attrs)]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
          (("x", list(x.shape)), ("y", None))]
    graph = helper.make_graph(nodes, "layer", io[:1], io[1:], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session, feeds = ort_session(model.SerializeToString()), {"x": x.cpu().numpy()}
    return lambda: session.run(None, feeds)


def _time_lut(config: Mapping[str, Any], in_grid: tuple[int, ...], out_grid: tuple[int, ...],
              clock: _Clock, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """``config``'s latency at each grid point (``shift`` channels narrower), made monotone:
    a layer never gets faster as it widens, and a running max irons out timing noise."""
    import torch

    ms = np.zeros((len(in_grid), len(out_grid)))
    for a, kin in enumerate(np.subtract(in_grid, shift[0])):
        for b, kout in enumerate(np.subtract(out_grid, shift[1])):
            width = int(kout if config.get("depthwise") else kin)
            x = torch.randn(config["shape"][0], width, *config["shape"][2:]) \
                if config["kind"] != "Linear" else torch.randn(*config["shape"][:-1], width)
            ms[a, b] = clock.time(_module(config, int(kin), int(kout)), x, config)
    return np.maximum.accumulate(np.maximum.accumulate(ms, axis=0), axis=1)


def _lut(config: Mapping[str, Any], in_grid: tuple[int, ...], out_grid: tuple[int, ...],
         clock: _Clock, align: int) -> LayerLut:
    """The table, and its odd twin when the runtime cares about ``align`` and the width it
    cares about varies (grouped convs stay aligned with their groups: no twin)."""
    ms = _time_lut(config, in_grid, out_grid, clock)
    dw = bool(config.get("depthwise"))
    varying = len(out_grid if dw else in_grid) > 1 and min(out_grid if dw else in_grid) > 1
    if not align or not varying or config["kind"] == "Linear" or (config["groups"] > 1
                                                                  and not dw):
        return LayerLut(dict(config), in_grid, out_grid, ms)
    odd = _time_lut(config, in_grid, out_grid, clock, (0, 1) if dw else (1, 0))
    return LayerLut(dict(config), in_grid, out_grid, ms, odd, align)


def _luts(layers: Sequence[_Layer], removal: np.ndarray, fractions: Sequence[float],
          clock: _Clock, align: int) -> tuple[list[LayerLut], np.ndarray]:
    """One table per distinct (config, which axes vary) and each layer's ``(lut, in, out)``."""
    index: dict[Any, int] = {}
    luts, rows = [], []
    for la in layers:
        config, varies = json.loads(la.config), removal[[la.in_dim, la.out_dim]].any(axis=1)
        key = (la.config, la.in_dim >= 0 and bool(varies[0]), bool(varies[1]))
        if key not in index:
            quantum = 1 if config.get("depthwise") else int(config.get("groups", 1))
            in_grid = (0,) if la.in_dim < 0 else _grid(config["in"], key[1], quantum, fractions)
            index[key] = len(luts)
            luts.append(_lut(config, in_grid, _grid(config["out"], key[2], quantum, fractions),
                             clock, align))
        rows.append((index[key], la.in_dim, la.out_dim))
    return luts, np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def _calibrate(table: LatencyTable, kept: Sequence[Sequence[int]], measured: Sequence[float],
               lives: Sequence[np.ndarray]) -> tuple[float, float, float]:
    """``(a, b, c)`` so that ``a + b x activations + c x layers running`` is the measured latency
    minus the running layers' entries: exact for the first (dense) model; ``b`` by least squares
    (``b >= 0``) over the models that run every layer, then ``c`` by least squares over those
    that remove some (0 when none does)."""
    resid = [m - float(np.sum(table.layer_ms(k)[lv])) for k, m, lv in zip(kept, measured, lives)]
    acts = np.asarray([table.activations(k, lv) for k, lv in zip(kept, lives)]) - \
        table.activations(kept[0], lives[0])
    runs = np.asarray([float(np.sum(lv)) for lv in lives]) - float(np.sum(lives[0]))
    dr = np.asarray(resid) - resid[0]
    whole = runs == 0
    de = acts[whole]
    slope = max(float(de @ dr[whole] / (de @ de)), 0.0) if float(de @ de) > 0 else 0.0
    dn = runs[~whole]
    per_layer = float(dn @ (dr[~whole] - slope * acts[~whole]) / (dn @ dn)) if dn.size else 0.0
    dense_acts, dense_runs = table.activations(kept[0], lives[0]), float(np.sum(lives[0]))
    return resid[0] - slope * dense_acts - per_layer * dense_runs, slope, per_layer


@dataclass(frozen=True)
class TableGrid:
    """How a table is built: the width ``fractions`` each layer is timed at, the uniform
    ratios the rest of the network is ``calibration``-fitted on (besides the dense model), and
    ``align`` (None: 8 in ONNX Runtime, else 0): layers are also timed one input channel
    narrower, for runtimes that are slow at widths off a multiple of it."""

    fractions: Sequence[float] = FRACTIONS
    calibration: Sequence[float] = (0.3, 0.6)
    align: int | None = None


def build_table(analysis: PrunableModel, target: LatencyTarget | None = None,
                grid: TableGrid | None = None) -> LatencyTable:
    """Time each conv/linear layer of ``analysis`` at ``grid.fractions`` of its widths on
    ``target`` (default: CPU, eager, float32, batch 1), and calibrate the rest on the dense
    model (exact) and uniform plans at ``grid.calibration`` ratios. Seconds on one CPU thread;
    cache the JSON under its ``key`` (the shape signature, device, runtime, batch, dtype,
    CPU)."""
    from autoprune.engine.inputs import batched
    from autoprune.latency.cost import shape_signature
    from autoprune.latency.machine import cpu_model
    from autoprune.latency.runtimes import check_runtime

    where, grid = target or LatencyTarget(), grid or TableGrid()
    device, runtime, dtype, batch_size = where.device, where.runtime, where.dtype, \
        where.batch_size or 1
    fractions, calibration = grid.fractions, grid.calibration
    check_runtime(runtime, device, dtype)
    start = time.perf_counter()
    clock = _Clock(device, runtime, dtype)
    layers, dense, removal = _layer_calls(analysis, batch_size)
    align = (8 if runtime == "onnxruntime" else 0) if grid.align is None else grid.align
    luts, rows = _luts(layers, removal, fractions, clock, align)
    groups = analysis.groups
    key = {"signature": shape_signature(analysis.model), "device": device, "runtime": runtime,
           "batch": batch_size, "dtype": dtype, "cpu": cpu_model()}
    table = LatencyTable(key, tuple(g.name for g in groups),
        tuple(g.channels for g in groups), tuple(g.quantum for g in groups),
        tuple(int(getattr(g, "unit_width", 1)) for g in groups), dense, removal, rows,
        np.asarray([la.positions for la in layers]), tuple(luts),
        tuple(la.name for la in layers), (0.0, 0.0), 0.0)
    lut_s = time.perf_counter() - start
    plans = [PruningPlan({}), *(PruningPlan(dict.fromkeys(table.group_names, r))
                                for r in calibration)]
    if analysis.removable:  # what a removed layer saves: every removable block gone
        plans.append(PruningPlan({}, drop=tuple(analysis.removable)))
    slow, inputs = replace(clock, sample_s=0.02, samples=11), batched(analysis.example_inputs,
                                                                      batch_size)
    measured = [slow.time(analysis.apply(p) if p.ratios or p.drop else
                          copy.deepcopy(analysis.model), inputs) for p in plans]
    kept = [table.kept(p) for p in plans]
    rest = _calibrate(table, kept, measured, [table.live(p.drop) for p in plans])
    entries = sum(t.ms.size * (1 if t.odd is None else 2) for t in luts)
    info = {"build_s": time.perf_counter() - start, "lut_s": lut_s, "entries": entries,
            "calibration": [[0.0, *map(float, calibration)], measured[:len(calibration) + 1]],
            "calibration_drop": [list(p.drop) for p in plans[len(calibration) + 1:]],
            "calibration_drop_ms": measured[len(calibration) + 1:]}
    return replace(table, rest=rest, dense_ms=measured[0], info=info)
