"""The public-model zoo (issue 12): torch-pruning alone vs autoprune at half the FLOPs.

Models nobody here wrote (timm 1.0.31 across ~50 families and torchvision classification
builders), ``num_classes=10``, random weights (nothing is downloaded), 64x64 input where the model
accepts it (else the smallest size it accepts: each :class:`Spec` says why). Two arms per model,
each in its own process (one torch thread, a wall-clock limit: a hang is recorded, never waited
for):

- ``tp``: torch-pruning alone: ``tp.pruner.MagnitudePruner`` (L2 magnitude), the classifier head
  ignored, ``global_pruning=False``, ``pruning_ratio`` searched by a guarded bisection (<= 8
  pruned copies) for counted MACs in [0.495, 0.5] of dense. Status: pruned-and-runs / error /
  hang.
- ``ap``: autoprune: ``analyze`` -> ``fit_budget(flops=0.5)`` -> ``apply`` -> run -> count.
  Status: on budget (counted within 1 % of 0.5) / off budget (runs, silently elsewhere) / named
  error (``UnsupportedModelError``, ``BudgetError``) / raw error (anything else) / hang.

Results go to ``benchmarks/results/zoo.json`` (written after every model: an interrupted run
resumes where it stopped; ``--fresh`` recomputes the chosen arms) and ``zoo.md``.

    python benchmarks/zoo.py [--arm tp|ap|both] [--models a,b | --subset ci] [--jobs 1]
                             [--timeout 120] [--out benchmarks/results/zoo.json]
                             [--fresh | --redo hang,raw error]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import difflib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
NUM_CLASSES = 10
TARGET = 0.5  # kept share of the dense MACs
TOLERANCE = 0.005  # "within 1 %" of the 0.5 budget, as in tests/test_zoo.py
EXACT = 0.005  # analytic vs counted MACs, relative
TP_STEPS = 8
MARK = "ZOO-RESULT "
ARMS = ("tp", "ap")
TP_STATUSES = ("pruned-and-runs", "error", "hang")
AP_STATUSES = ("on budget", "off budget", "named error", "raw error", "hang")


@dataclass(frozen=True)
class Spec:
    """One public model: how to build it and the input it gets."""

    name: str
    source: str  # "timm" | "torchvision"
    family: str
    size: int = 64
    kwargs: tuple[tuple[str, Any], ...] = ()
    note: str = ""

    def build(self) -> Any:
        """The model, random weights (no download), ``num_classes=10``, in eval mode."""
        import torch

        torch.manual_seed(0)
        if self.source == "timm":
            import timm

            model = timm.create_model(self.name, pretrained=False, num_classes=NUM_CLASSES,
                                      **dict(self.kwargs))
        else:
            import torchvision

            model = torchvision.models.get_model(self.name, weights=None,
                                                 num_classes=NUM_CLASSES, **dict(self.kwargs))
        return model.eval()

    def example(self) -> Any:
        import torch

        return torch.randn(1, 3, self.size, self.size, generator=torch.Generator().manual_seed(0))


def _timm(name: str, family: str, size: int = 64, note: str = "", **kwargs: Any) -> Spec:
    if "img_size" in kwargs and not note:
        note = f"img_size={kwargs['img_size']}"
    return Spec(name, "timm", family, size, tuple(kwargs.items()), note)


def _tv(name: str, family: str, size: int = 64, note: str = "", **kwargs: Any) -> Spec:
    return Spec(name, "torchvision", family, size, tuple(kwargs.items()), note)


_NEEDS_224 = "final stage's attention bias is fixed at 7x7 tokens: input 224 only"
TIMM = [
    # attention and hybrids (timm's own Attention, window and mobile attention)
    _timm("vit_tiny_patch16_224", "vit", img_size=64),
    _timm("deit_tiny_patch16_224", "deit", img_size=64),
    _timm("pit_ti_224", "pit", img_size=64),
    _timm("swin_tiny_patch4_window7_224", "swin", img_size=64),
    _timm("levit_128s", "levit", img_size=64),
    _timm("mobilevit_xxs", "mobilevit", img_size=64),
    _timm("mobilevitv2_050", "mobilevitv2", img_size=64),
    _timm("tiny_vit_5m_224", "tiny_vit", note="no img_size argument; runs at 64"),
    _timm("efficientformer_l1", "efficientformer", 224, note=_NEEDS_224),
    _timm("efficientformerv2_s0", "efficientformerv2", img_size=64),
    _timm("efficientvit_b0", "efficientvit_mit"),
    _timm("efficientvit_m0", "efficientvit_msra", img_size=64),
    _timm("coatnet_nano_rw_224", "coatnet", img_size=64),
    _timm("maxvit_nano_rw_256", "maxvit", img_size=64),
    _timm("mobilenetv4_hybrid_medium", "mobilenetv4_hybrid"),
    _timm("mixer_s16_224", "mlp_mixer", img_size=64),
    _timm("cait_xxs24_224", "cait", img_size=64),
    _timm("xcit_nano_12_p16_224", "xcit", img_size=64),
    _timm("pvt_v2_b0", "pvt_v2"),
    _timm("convit_tiny", "convit", img_size=64),
    _timm("eva02_tiny_patch14_224", "eva02", img_size=64),
    _timm("coat_lite_tiny", "coat", img_size=64),
    _timm("gcvit_xxtiny", "gcvit", img_size=64),
    _timm("botnet26t_256", "botnet", img_size=64),
    _timm("lambda_resnet26t", "lambda", img_size=64),
    _timm("visformer_tiny", "visformer", img_size=64),
    # split / concat, per-channel state, attention-like gates
    _timm("cspresnet50", "cspnet"),
    _timm("cspdarknet53", "cspnet"),
    _timm("cs3darknet_s", "cspnet_cs3"),
    _timm("dpn68", "dpn"),
    _timm("mixnet_s", "mixnet"),
    _timm("edgenext_xx_small", "edgenext"),
    _timm("res2net50_26w_4s", "res2net"),
    _timm("inception_next_tiny", "inception_next"),
    _timm("nf_resnet26", "nfnet"),
    _timm("nf_regnet_b0", "nfnet"),
    _timm("poolformer_s12", "poolformer"),
    _timm("poolformerv2_s12", "poolformerv2"),
    _timm("tresnet_m", "tresnet"),
    _timm("skresnet18", "sknet"),
    _timm("ghostnet_100", "ghostnet"),
    _timm("ghostnetv2_100", "ghostnetv2"),
    _timm("gcresnet33ts", "gcresnet"),
    _timm("resnest14d", "resnest"),
    _timm("rexnet_100", "rexnet"),
    _timm("ese_vovnet19b_dw", "vovnet"),
    _timm("hrnet_w18_small", "hrnet"),
    _timm("dla34", "dla"),
    _timm("hgnetv2_b0", "hgnet"),
    _timm("repghostnet_050", "repghost"),
    _timm("starnet_s1", "starnet"),
    _timm("mambaout_femto", "mambaout"),
    # plain, residual, depthwise / inverted residual, grouped, reparameterisable
    _timm("convnext_atto", "convnext"),
    _timm("regnetx_002", "regnet"),
    _timm("regnety_002", "regnet"),
    _timm("efficientnet_b0", "efficientnet"),
    _timm("mobilenetv3_small_100", "mobilenetv3"),
    _timm("lcnet_050", "lcnet"),
    _timm("resnet18", "resnet"),
    _timm("resnet50d", "resnet"),
    _timm("seresnext26d_32x4d", "resnet_se"),
    _timm("resnetv2_50", "resnetv2"),
    _timm("densenet121", "densenet"),
    _timm("xception41", "xception"),
    _timm("repvgg_a0", "repvgg", img_size=64),
    _timm("mobileone_s0", "mobileone", img_size=64),
    _timm("repvit_m0_9", "repvit", img_size=64),
    _timm("fastvit_t8", "fastvit"),
]
_NO_AUX = {"aux_logits": False, "init_weights": False}
TORCHVISION = [
    _tv("alexnet", "alexnet"),
    _tv("vgg11", "vgg"),
    _tv("vgg11_bn", "vgg"),
    _tv("vgg16_bn", "vgg"),
    _tv("squeezenet1_0", "squeezenet"),
    _tv("squeezenet1_1", "squeezenet"),
    _tv("googlenet", "googlenet", note="aux_logits=False", **_NO_AUX),
    _tv("inception_v3", "inception", 75, note="aux_logits=False; 64 is too small: 75 is the "
        "smallest input", **_NO_AUX),
    _tv("resnet18", "resnet"),
    _tv("resnet34", "resnet"),
    _tv("resnet50", "resnet"),
    _tv("resnet101", "resnet"),
    _tv("resnext50_32x4d", "resnext"),
    _tv("wide_resnet50_2", "wide_resnet"),
    _tv("densenet121", "densenet"),
    _tv("densenet169", "densenet"),
    _tv("densenet201", "densenet"),
    _tv("mobilenet_v2", "mobilenet_v2"),
    _tv("mobilenet_v3_small", "mobilenet_v3"),
    _tv("mobilenet_v3_large", "mobilenet_v3"),
    _tv("mnasnet0_5", "mnasnet"),
    _tv("mnasnet1_0", "mnasnet"),
    _tv("mnasnet1_3", "mnasnet"),
    _tv("shufflenet_v2_x0_5", "shufflenet_v2"),
    _tv("shufflenet_v2_x1_0", "shufflenet_v2"),
    _tv("efficientnet_b0", "efficientnet"),
    _tv("efficientnet_b1", "efficientnet"),
    _tv("efficientnet_b2", "efficientnet"),
    _tv("efficientnet_v2_s", "efficientnet_v2"),
    _tv("regnet_x_400mf", "regnet"),
    _tv("regnet_x_800mf", "regnet"),
    _tv("regnet_y_400mf", "regnet"),
    _tv("regnet_y_800mf", "regnet"),
    _tv("regnet_y_1_6gf", "regnet"),
    _tv("convnext_tiny", "convnext"),
    _tv("convnext_small", "convnext"),
    _tv("vit_b_16", "vit", note="image_size=64", image_size=64),
    _tv("vit_b_32", "vit", note="image_size=64", image_size=64),
    _tv("swin_t", "swin"),
    _tv("swin_v2_t", "swin_v2"),
    _tv("maxvit_t", "maxvit", 224, note="7x7 partitions need 224 (input_size=64 is refused)"),
    _tv("efficientnet_b3", "efficientnet"),
]
MODELS: list[Spec] = TIMM + TORCHVISION


def key(spec: Spec) -> str:
    """A unique name: torchvision models are prefixed (both libraries have a resnet18)."""
    return spec.name if spec.source == "timm" else f"tv/{spec.name}"


BY_KEY = {key(s): s for s in MODELS}

#: 30 models that each finish in seconds at 64x64 on one thread, one per kind of coupling: plain,
#: residual, depthwise / inverted residual, grouped, concat, attention (ViT, DeiT, Swin, LeViT,
#: TinyViT, MobileViT), CSP, split (mixnet), ghost, NF, pooling mixer, reparameterisable
CI_SUBSET = (
    "tv/resnet18", "tv/alexnet", "tv/squeezenet1_1", "tv/mobilenet_v2", "tv/mobilenet_v3_small",
    "tv/resnext50_32x4d", "tv/regnet_x_400mf", "tv/densenet121", "tv/googlenet",
    "tv/efficientnet_b0", "tv/mnasnet0_5", "tv/shufflenet_v2_x0_5",
    "vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224",
    "levit_128s", "repvit_m0_9", "tiny_vit_5m_224", "mobilevit_xxs",
    "cs3darknet_s", "mixnet_s", "ghostnet_100", "nf_resnet26", "poolformer_s12",
    "edgenext_xx_small", "convnext_atto", "regnety_002", "lcnet_050", "ese_vovnet19b_dw",
    "dpn68",
)


# --------------------------------------------------------------------------- one model, one arm
def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def _our_frame(exc: BaseException) -> str:
    """The last autoprune / torch_pruning frame of ``exc``'s traceback ('' if none)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "/autoprune/" in f.filename or "/torch_pruning/" in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    parts = Path(f.filename).parts
    start = max(i for i, p in enumerate(parts) if p in ("autoprune", "torch_pruning"))
    return f"{'/'.join(parts[start:])}:{f.lineno} in {f.name}"


def _out(model: Any, x: Any) -> tuple[int, ...]:
    import torch

    with torch.no_grad():
        y = model(x)
    while isinstance(y, (tuple, list)):
        y = y[0]
    return tuple(y.shape)


def _heads(model: Any) -> list[str]:
    """The classifier head(s): every Linear / Conv whose output is the 10 classes (LeViT and
    DeiT-distilled have two)."""
    from torch import nn

    return [n for n, m in model.named_modules()
            if (isinstance(m, nn.Linear) and m.out_features == NUM_CLASSES)
            or (isinstance(m, nn.Conv2d) and m.out_channels == NUM_CLASSES)]


MAX_RATIO = 0.95


def _next_ratio(lo: tuple[float, float], hi: tuple[float, float] | None) -> float:
    """The next pruning ratio to try: sqrt(kept share) is about linear in the ratio, so
    interpolate (regula falsi) inside the bracket, kept off its ends so it always shrinks."""
    aim = math.sqrt(TARGET - TOLERANCE / 2)
    if hi is None:  # extrapolate from the last ratio that kept too much
        return min(MAX_RATIO, 1 - (1 - lo[0]) * aim / math.sqrt(lo[1]))
    a, b = math.sqrt(lo[1]), math.sqrt(hi[1])
    width = hi[0] - lo[0]
    guess = lo[0] + (a - aim) / (a - b) * width if a > b else lo[0] + width / 2
    return min(max(guess, lo[0] + 0.1 * width), hi[0] - 0.1 * width)


def tp_arm(model: Any, x: Any) -> dict[str, Any]:
    """torch-pruning alone, as its README shows it: one ratio for every layer, head ignored."""
    import torch_pruning as tp

    dense, _ = tp.utils.count_ops_and_params(model, x)
    heads = _heads(model)
    shape = _out(model, x)

    def prune_at(ratio: float) -> float:
        pruned = copy.deepcopy(model)
        modules = dict(pruned.named_modules())
        pruner = tp.pruner.MagnitudePruner(
            pruned, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
            ignored_layers=[modules[n] for n in heads], global_pruning=False)
        pruner.step()
        if _out(pruned, x) != shape:
            raise RuntimeError(f"pruned output shape {_out(pruned, x)} != dense {shape}")
        return tp.utils.count_ops_and_params(pruned, x)[0] / dense

    row: dict[str, Any] = {"dense_macs": dense, "heads": heads, "steps": []}
    lo: tuple[float, float] = (0.0, 1.0)  # (pruning ratio, kept MACs share): above the target
    hi: tuple[float, float] | None = None  # the bracket's other end: at or below the target
    ratio = 1 - math.sqrt(TARGET)  # MACs ~ (1 - r)^2
    try:
        for _ in range(TP_STEPS):
            share = prune_at(ratio)
            row["steps"].append([round(ratio, 5), share])
            if share <= TARGET:
                hi = (ratio, share)
                if share >= TARGET - TOLERANCE:
                    break
            else:
                lo = (ratio, share)
            if hi is None and lo[0] >= MAX_RATIO:
                break  # even the largest ratio keeps more than the target
            ratio = _next_ratio(lo, hi)
    except Exception as exc:  # torch-pruning alone: any failure is the finding
        row.update(status="error", message=_first_line(exc), frame=_our_frame(exc),
                   at_ratio=round(ratio, 5))
        return row
    under = [step for step in row["steps"] if step[1] <= TARGET]
    ratio, share = (max(under, key=lambda step: step[1]) if under else
                    min(row["steps"], key=lambda step: step[1]))
    row.update(status="pruned-and-runs", pruning_ratio=ratio, achieved=share,
               within=abs(share - TARGET) <= TOLERANCE and share <= TARGET)
    return row


def ap_arm(model: Any, x: Any) -> dict[str, Any]:
    """autoprune as the README shows it: analyze, fit half the FLOPs, apply, run, count.

    Two oracles count the pruned model: torch-pruning's counter (layers and elementwise ops) and
    ``FlopCounterMode`` (matmuls, attention's tokens² products included). The cost model must
    match each within 0.5 % (its ``counter_macs`` and ``matmul_macs`` parts), params too; then
    its total (what the budget limits) is the achieved ratio, and "on budget" means it is within
    1 % of 0.5 with every count exact.
    """
    import autoprune as ap
    from autoprune.engine import count_macs_params
    from autoprune.engine.count import count_matmul_macs

    dense, dense_params = count_macs_params(model, x)
    dense_matmul = count_matmul_macs(model, x)
    row: dict[str, Any] = {"dense_macs": dense, "frozen": []}
    try:
        a = ap.analyze(model, x)
        row["frozen"] = [{"name": str(f.name), "reason": str(f.reason)}
                         for f in getattr(a, "frozen", [])]
        row["groups"] = len(a.groups)
        row["head_groups"] = sum(g.kind == "heads" for g in a.groups)
        plan = ap.fit_budget(model, x, 1.0, flops=TARGET, analysis=a)
        cm, kept = a.cost_model, a.kept(plan)
        row["analytic"] = a.macs(plan) / cm.dense_macs()
        pruned = a.apply(plan)
        shape, dense_shape = _out(pruned, x), _out(model, x)
        macs, params = count_macs_params(pruned, x)
        matmul = count_matmul_macs(pruned, x)
    except (ap.UnsupportedModelError, ap.BudgetError) as exc:
        row.update(status="named error", message=_first_line(exc))
        return row
    except Exception as exc:
        row.update(status="raw error", message=_first_line(exc), frame=_our_frame(exc))
        return row
    checks = {"counter": (cm.counter_macs(kept), macs), "matmul": (cm.matmul_macs(kept), matmul),
              "params": (a.params(plan), params)}
    row.update(achieved=row["analytic"], counter_ratio=macs / dense,
               matmul_ratio=matmul / dense_matmul if dense_matmul else math.nan,
               params_ratio=params / dense_params,
               analytic_vs_counted=checks["counter"][0] / macs if macs else math.inf,
               analytic_matmul_vs_counted=checks["matmul"][0] / matmul if matmul else math.inf,
               analytic_params_vs_counted=checks["params"][0] / params if params else math.inf)
    off = [k for k, (want, got) in checks.items() if abs(want - got) > EXACT * max(got, 1.0)]
    row["exact"] = not off
    if shape != dense_shape:
        row.update(status="raw error", message=f"pruned output shape {shape} != {dense_shape}")
    elif off:
        row.update(status="off budget", message=f"analytic != counted: {', '.join(off)}")
    elif abs(row["achieved"] - TARGET) <= TOLERANCE:
        row["status"] = "on budget"
    else:
        row["status"] = "off budget"
    return row


ARM_FUNCS: dict[str, Callable[[Any, Any], dict[str, Any]]] = {"tp": tp_arm, "ap": ap_arm}


def run_arm(spec: Spec, arm: str) -> dict[str, Any]:
    """One arm on one model in this process (what ``--one`` runs)."""
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        model, x = spec.build(), spec.example()
        _out(model, x)
    except Exception as exc:
        return {"status": "build error", "message": _first_line(exc),
                "seconds": time.perf_counter() - start}
    built = time.perf_counter()
    row = ARM_FUNCS[arm](model, x)
    row.update(build_s=built - start, seconds=time.perf_counter() - built,
               params=sum(p.numel() for p in model.parameters()))
    return row


def run_in_subprocess(spec: Spec, arm: str, timeout: float) -> dict[str, Any]:
    """``run_arm`` in a fresh process: a hang past ``timeout`` s is killed and recorded."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", key(spec), "--arm", arm,
           "--timeout", str(timeout)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"status": "hang", "message": f"killed after {timeout:g} s",
                "seconds": time.perf_counter() - start}
    for line in reversed(out.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = [ln for ln in err.splitlines() if ln.strip()][-1:] or [""]
    status = "error" if arm == "tp" else "raw error"
    return {"status": status, "message": f"process died (exit {proc.returncode}): {tail[0][:300]}",
            "seconds": time.perf_counter() - start}


# --------------------------------------------------------------------------- results file
def environment(command: str) -> dict[str, Any]:
    import timm
    import torch
    import torch_pruning
    import torchvision

    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "torch_pruning": torch_pruning.__version__,
            "threads": 1, "command": command}


def load(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {"environment": {}, "commands": [], "rows": {}}


def save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
    path.with_suffix(".md").write_text(markdown(data) + "\n")


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _frozen(frozen: list[dict[str, str]], first: int = 3) -> str:
    if not frozen:
        return ""
    shown = "; ".join(f"`{f['name']}` ({f['reason'][:80]})" for f in frozen[:first])
    more = f"; +{len(frozen) - first} more" if len(frozen) > first else ""
    return f"{len(frozen)}: {shown}{more}".replace("|", "/")


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "not run"
    status = row["status"]
    if status == "pruned-and-runs" and not row.get("within"):
        status += " (never within 1 % of 0.5)"
    if "message" in row:
        status += f": {row['message'][:90]}"
    return status.replace("|", "/").replace("\n", " ")


def counts(rows: Iterable[dict[str, Any]]) -> dict[str, Counter[str]]:
    """Per arm: how many models ended in each status ('not run' where the arm is missing)."""
    rows = list(rows)
    out: dict[str, Counter[str]] = {}
    for arm in ARMS:
        out[arm] = Counter(r[arm]["status"] if arm in r else "not run" for r in rows)
    return out


def markdown(data: dict[str, Any]) -> str:
    rows = [data["rows"][k] | {"key": k} for k in BY_KEY if k in data["rows"]]
    rows += [r | {"key": k} for k, r in data["rows"].items() if k not in BY_KEY]
    c = counts(rows)
    n = len(rows)
    timm_n = sum(r["source"] == "timm" for r in rows)
    tp_in = sum(bool(r.get("tp", {}).get("within")) for r in rows)
    ap_on = [r for r in rows if r.get("ap", {}).get("status") == "on budget"]
    exact = sum(bool(r["ap"].get("exact")) for r in ap_on)
    frozen = sum(bool(r["ap"].get("frozen")) for r in ap_on)

    def names(arm: str, status: str) -> str:
        found = [r["key"] for r in rows if r.get(arm, {}).get("status") == status]
        return ", ".join(found[:12]) + (", ..." if len(found) > 12 else "")

    env = data.get("environment", {})
    lines = [
        "# Public-model zoo: torch-pruning alone vs autoprune at 0.5 FLOPs", "",
        f"{n} models ({timm_n} timm, {n - timm_n} torchvision), num_classes=10, random weights, "
        "64x64 input unless noted; each arm in its own process, one thread, with a time limit.",
        "", f"{env.get('date', '')} · {env.get('machine', '')} · Python {env.get('python', '')} · "
        f"torch {env.get('torch', '')} · torchvision {env.get('torchvision', '')} · "
        f"timm {env.get('timm', '')} · torch-pruning {env.get('torch_pruning', '')}", "",
        "Commands (in order; a later one resumes or refreshes arms): "
        + "; ".join(f"`{c}`" for c in dict.fromkeys(data.get("commands", []))), "",
        "The tp arm counts with `tp.utils.count_ops_and_params`; within 1 %: "
        "|counted / dense - 0.5| <= 0.005. The ap arm's achieved ratio is its cost model's "
        "(attention's tokens² matmuls included), and it is on budget only when two counters "
        "agree with that model within 0.5 % on the pruned copy: "
        "`autoprune.engine.count_macs_params` (torch-pruning's counter, attention hooks "
        "corrected) and `FlopCounterMode` (matmuls); analytic/counted is the first.", "",
        "| | count | models |", "|---|---|---|",
        f"| torch-pruning alone prunes and runs | {c['tp']['pruned-and-runs']} | |",
        f"| … of which within 1 % of 0.5 | {tp_in} | |",
        f"| torch-pruning alone raises | {c['tp']['error']} | {names('tp', 'error')} |",
        f"| torch-pruning alone hangs | {c['tp']['hang']} | {names('tp', 'hang')} |",
        f"| autoprune lands within 1 % of the budget | {c['ap']['on budget']} | |",
        f"| … with analytic == counted (0.5 %) | {exact} | |",
        f"| … with frozen groups | {frozen} | |",
        f"| autoprune runs but is **silently off budget** | {c['ap']['off budget']} | "
        f"{names('ap', 'off budget')} |",
        f"| autoprune raises its named error | {c['ap']['named error']} | "
        f"{names('ap', 'named error')} |",
        f"| autoprune lets a **raw error** out | {c['ap']['raw error']} | "
        f"{names('ap', 'raw error')} |",
        f"| autoprune hangs | {c['ap']['hang']} | {names('ap', 'hang')} |",
    ]
    other = {s: k for arm in ARMS for s, k in c[arm].items()
             if s not in TP_STATUSES + AP_STATUSES}
    lines += [f"| {s} | {k} | |" for s, k in sorted(other.items())]
    lines += ["", "| model | source | family | input | tp status | tp ratio | tp s | ap status | "
              "achieved | analytic/counted | frozen groups | ap s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tp_row, ap_row = r.get("tp"), r.get("ap")
        size = f"{r['size']}" + (f" ({r['note']})" if r.get("note") else "")
        avc = ap_row.get("analytic_vs_counted") if ap_row else None
        lines.append(" | ".join([
            f"| {r['key']}", r["source"], r["family"], size, _cell(tp_row),
            _ratio(tp_row.get("achieved")) if tp_row else "",
            f"{tp_row['seconds']:.1f}" if tp_row else "", _cell(ap_row),
            _ratio(ap_row.get("achieved")) if ap_row else "",
            f"{avc:.4f}" if avc is not None else "",
            _frozen(ap_row.get("frozen", [])) if ap_row else "",
            f"{ap_row['seconds']:.1f}" if ap_row else ""]) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- driver
def select(models: str | None, subset: str | None) -> list[Spec]:
    if models and subset:
        raise SystemExit("--models and --subset exclude each other: pass one")
    if subset:
        if subset != "ci":
            raise SystemExit(f"--subset {subset!r} is unknown: the one subset is 'ci'")
        return [BY_KEY[k] for k in CI_SUBSET]
    if not models:
        return list(MODELS)
    chosen = []
    for name in models.split(","):
        name = name.strip()
        if name not in BY_KEY:
            close = difflib.get_close_matches(name, list(BY_KEY), n=3)
            raise SystemExit(f"--models: {name!r} is not in the zoo"
                             + (f"; did you mean {', '.join(close)}?" if close else
                                " (torchvision models are named tv/NAME)"))
        chosen.append(BY_KEY[name])
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", choices=("tp", "ap", "both"), default="both")
    parser.add_argument("--models", help="comma-separated keys (torchvision: tv/NAME)")
    parser.add_argument("--subset", help="'ci': the models tests/test_zoo.py runs")
    parser.add_argument("--jobs", type=int, default=1, help="models at once (2 at most here)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per model and arm")
    parser.add_argument("--out", type=Path, default=RESULTS / "zoo.json")
    parser.add_argument("--fresh", action="store_true", help="recompute the chosen arms")
    parser.add_argument("--redo", default="", help="recompute the chosen arms where their "
                        "status is one of these (comma-separated, e.g. 'hang')")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # the child process: one arm of one model, one JSON line on stdout
        arm = "tp" if args.arm == "both" else args.arm
        signal.alarm(int(args.timeout) + 30)  # an orphan (its parent killed) still ends
        print(MARK + json.dumps(run_arm(BY_KEY[args.one], arm)), flush=True)
        return
    if args.jobs < 1:
        raise SystemExit(f"--jobs {args.jobs}: pass 1 or more (2 at most on a 2-core machine)")
    arms = ARMS if args.arm == "both" else (args.arm,)
    specs = select(args.models, args.subset)
    command = "python benchmarks/zoo.py " + " ".join(sys.argv[1:] if argv is None else argv)
    data = load(args.out)
    redo = {status.strip() for status in args.redo.split(",") if status.strip()}
    for spec in specs:
        row = data["rows"].setdefault(key(spec), {})
        row.update(source=spec.source, family=spec.family, size=spec.size, note=spec.note)
        for arm in arms:
            if args.fresh or row.get(arm, {}).get("status") in redo:
                row.pop(arm, None)
    todo = [(s, a) for s in specs for a in arms if a not in data["rows"][key(s)]]
    if todo:  # a run with nothing to do only re-renders zoo.md
        data["environment"] = environment(command)
        data.setdefault("commands", []).append(command)
    save(args.out, data)
    print(f"{len(todo)} runs ({len(specs)} models x {arms}); results in {args.out}", flush=True)
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_in_subprocess, s, a, args.timeout): (s, a) for s, a in todo}
        for done, future in enumerate(as_completed(futures), 1):
            spec, arm = futures[future]
            result = future.result()
            with lock:
                data["rows"][key(spec)][arm] = result
                save(args.out, data)
            ratio = result.get("achieved")
            ratio_text = f" {ratio:.3f}" if ratio is not None else ""
            message = f" {result['message'][:120]}" if "message" in result else ""
            print(f"[{done}/{len(todo)}] {key(spec)} {arm}: {result['status']}{ratio_text} "
                  f"({result.get('seconds', 0):.1f} s){message}", flush=True)
    print(markdown(data))


if __name__ == "__main__":
    main()
