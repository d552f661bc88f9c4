"""Custom layers: torch-pruning's customized pruners for layers it cannot prune on its own.

torch-pruning prunes the standard layers (convs, linears, norms, PReLU, embeddings) and treats
every other module as element-wise: channels pass through untouched. A layer that holds its own
per-channel state (a learnable scale, a stored ``channels`` count or view shape, a per-channel
buffer) is then left at its dense size and the pruned copy no longer runs, or runs wrongly.

:func:`register_layer` maps such a layer type to a pruner (a ``tp.pruner.BasePruningFunc``
instance, what torch-pruning's ``customized_pruners=`` expects); ``channel_param=`` builds one
for the common case of per-channel tensors along one dim. The engine passes
:func:`registered_pruners` to every ``build_dependency`` call. Built-in handlers, when timm is
installed: ``ScaledStdConv2d`` (NF-nets' per-channel ``gain``), ``metaformer.Scale``
(PoolFormer's stored view shape), ``BlurPool2d`` (TResNet's per-channel blur filter buffer) and
``SelectiveKernelAttn`` (SK-nets' attention logits, which torch-pruning maps wrongly).

Three helpers serve the engine: :func:`custom_magnitude` ranks channels of layers handled here
(torch-pruning's importance only knows its own pruning functions and skips them);
:func:`channel_params` names the per-channel parameters of such layers and :func:`linked_dims`
the sub-layers whose channels follow theirs, for the cost model.
"""

from __future__ import annotations

import importlib
import keyword
from collections.abc import Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import ConfigError

__all__ = ["CUSTOM_PRUNERS", "ChannelParamPruner", "ConvChannelParamPruner", "channel_params",
           "custom_magnitude", "linked_dims", "register_layer", "registered_pruners",
           "unregister_layer"]

# layer type -> its pruner; torch-pruning matches customized pruners by exact type
CUSTOM_PRUNERS: dict[type[nn.Module], tp.pruner.BasePruningFunc] = {}

# int attributes holding a layer's channel count, updated when it changes
COUNT_ATTRS = ("num_features", "num_channels", "channels", "dim", "in_channels", "out_channels")


def _select(layer: nn.Module, name: str, keep: torch.Tensor, dim: int) -> None:
    """Keep the ``keep`` indices of tensor attribute ``name`` along ``dim``: a parameter stays a
    parameter (``requires_grad`` and gradient kept), a buffer stays a buffer."""
    old = getattr(layer, name)
    new = torch.index_select(old.data, dim, keep.to(old.device)).contiguous()
    if isinstance(old, nn.Parameter):
        param = nn.Parameter(new, requires_grad=old.requires_grad)
        if old.grad is not None:
            param.grad = torch.index_select(old.grad, dim, keep.to(old.device)).contiguous()
        setattr(layer, name, param)
    else:  # a registered buffer stays registered (and keeps its persistence): setattr updates it
        setattr(layer, name, new)


def _keep(n: int, idxs: Sequence[int]) -> torch.Tensor:
    drop = {int(i) for i in idxs}
    return torch.tensor([i for i in range(n) if i not in drop], dtype=torch.long)


def _sync_counts(layer: nn.Module, old: int, new: int, dim: int) -> None:
    """Update int channel-count attributes (and a stored view ``shape``) equal to ``old``."""
    for attr in COUNT_ATTRS:
        value = getattr(layer, attr, None)
        if type(value) is int and value == old:
            setattr(layer, attr, new)
    shape = getattr(layer, "shape", None)
    if isinstance(shape, (tuple, list)) and -len(shape) <= dim < len(shape) \
            and shape[dim] == old and all(type(s) is int for s in shape):
        fixed = list(shape)
        fixed[dim] = new
        layer.shape = type(shape)(fixed)


class ChannelParamPruner(tp.pruner.BasePruningFunc):
    """Prunes a layer whose channels live in per-channel tensors along one dim.

    Input and output channels are the same channels (like BatchNorm). Pruning removes the indices
    from each named parameter, buffer or tensor attribute along ``dim`` and updates int attributes
    named like a channel count (``num_features``, ``num_channels``, ``channels``, ``dim``,
    ``in_channels``, ``out_channels``) and a stored int tuple ``shape`` where they equal the old
    count.
    """

    TARGET_MODULES = None

    def __init__(self, names: Sequence[str], dim: int = 0) -> None:
        super().__init__()
        self.names = tuple(names)
        self.dim = dim

    def _tensors(self, layer: nn.Module) -> list[tuple[str, torch.Tensor]]:
        found = []
        for name in self.names:
            value = getattr(layer, name, None)
            if not isinstance(value, torch.Tensor):
                have = [n for n, _ in layer.named_parameters(recurse=False)]
                have += [n for n, _ in layer.named_buffers(recurse=False)]
                raise ConfigError(
                    f"register_layer({type(layer).__name__}, channel_param={_shown(self.names)}): "
                    f"this {type(layer).__name__} has no tensor {name!r} "
                    f"({'its parameters and buffers: ' + ', '.join(have) if have else 'it has no parameters or buffers'}); "  # noqa: E501
                    "pass the names of its per-channel tensors, or a pruner= for this layer"
                )
            if not -value.dim() <= self.dim < value.dim():
                raise ConfigError(
                    f"register_layer({type(layer).__name__}, channel_param={_shown(self.names)}, "
                    f"channel_dim={self.dim}): tensor {name!r} has shape {tuple(value.shape)}, "
                    "no such dim; pass the dim that indexes its channels"
                )
            found.append((name, value))
        sizes = {int(t.shape[self.dim]) for _, t in found}
        if len(sizes) > 1:
            shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in found)
            raise ConfigError(
                f"register_layer({type(layer).__name__}, channel_param={_shown(self.names)}, "
                f"channel_dim={self.dim}): the tensors disagree on the channel count ({shapes}); "
                "name only tensors that hold one entry per channel along channel_dim"
            )
        return found

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        tensors = self._tensors(layer)
        old = int(tensors[0][1].shape[self.dim])
        keep = _keep(old, idxs)
        for name, _ in tensors:
            _select(layer, name, keep, self.dim)
        _sync_counts(layer, old, len(keep), self.dim)
        return layer

    prune_in_channels = prune_out_channels  # the same channels: torch-pruning's intra-layer link

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return int(self._tensors(layer)[0][1].shape[self.dim])

    get_in_channels = get_out_channels

    def channel_params(self, layer: nn.Module) -> list[tuple[nn.Parameter, int]]:
        """``(parameter, channel dim)`` of each per-channel parameter (for the cost model)."""
        return [(t, self.dim) for _, t in self._tensors(layer) if isinstance(t, nn.Parameter)]

    def channel_magnitude(self, layer: nn.Module, idxs: Sequence[int], out: bool,
                          p: int) -> torch.Tensor:
        """Per-channel ``sum |w|^p`` of the parameters, at ``idxs``."""
        index = torch.tensor([int(i) for i in idxs], dtype=torch.long)
        total = torch.zeros(len(index))
        for t, dim in self.channel_params(layer):
            w = torch.index_select(t.detach().float().cpu(), dim, index).movedim(dim, 0)
            total += w.abs().pow(p).reshape(len(index), -1).sum(1)
        return total


class ConvChannelParamPruner(ChannelParamPruner):
    """A conv subclass holding extra tensors per *output* channel (timm ``ScaledStdConv2d``'s
    ``gain``): torch-pruning's conv pruning plus those tensors along ``dim``.

    The layer's other constants (``ScaledStdConv2d.scale``, from the dense fan-in) are kept.
    A depthwise instance loses torch-pruning's in/out link (one pruner serves the whole type), so
    pruning it from its input fails loudly rather than silently.
    """

    def _conv(self, layer: nn.Module) -> tp.pruner.BasePruningFunc:
        depthwise = layer.groups == layer.out_channels and layer.out_channels > 1
        kind = tp.ops.OPTYPE.DEPTHWISE_CONV if depthwise else tp.ops.OPTYPE.CONV
        return tp.pruner.function.PrunerBox[kind]

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        tensors = self._tensors(layer)
        keep = _keep(int(layer.out_channels), idxs)
        self._conv(layer).prune_out_channels(layer, idxs)
        for name, _ in tensors:
            _select(layer, name, keep, self.dim)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        if self._conv(layer) is tp.pruner.function.PrunerBox[tp.ops.OPTYPE.DEPTHWISE_CONV]:
            return self.prune_out_channels(layer, idxs)
        self._conv(layer).prune_in_channels(layer, idxs)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return int(layer.out_channels)

    def get_in_channels(self, layer: nn.Module) -> int | None:
        return int(layer.in_channels)

    def get_out_channel_groups(self, layer: nn.Module) -> int:
        return int(layer.groups)

    def get_in_channel_groups(self, layer: nn.Module) -> int:
        return int(layer.groups)

    def channel_params(self, layer: nn.Module) -> list[tuple[nn.Parameter, int]]:
        """Only the extra tensors: the weight and bias are the conv's own."""
        return super().channel_params(layer)

    def channel_magnitude(self, layer: nn.Module, idxs: Sequence[int], out: bool,
                          p: int) -> torch.Tensor:
        """``sum |w|^p`` of the conv weight per output (or input) channel, at ``idxs``."""
        w = layer.weight.detach().float().cpu()
        index = torch.tensor([int(i) for i in idxs], dtype=torch.long)
        if out or self._conv(layer) is tp.pruner.function.PrunerBox[
                tp.ops.OPTYPE.DEPTHWISE_CONV]:
            return w.abs().pow(p).flatten(1).sum(1)[index]
        per_in = w.abs().pow(p).transpose(0, 1).flatten(1).sum(1)
        if layer.groups > 1:  # grouped: each group's weight covers its own input slice
            per_in = per_in.repeat(layer.groups)
        return per_in[index]


class _BlurPoolPruner(ChannelParamPruner):
    """timm ``BlurPool2d``: a fixed depthwise blur whose ``filt`` buffer (and ``channels``) are
    per channel, unless built with ``channels=None`` (one filter expanded: nothing to prune)."""

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return None if layer.channels is None else super().get_out_channels(layer)

    get_in_channels = get_out_channels

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return layer if layer.channels is None else super().prune_out_channels(layer, idxs)

    prune_in_channels = prune_out_channels


class _SelectiveKernelAttnPruner(tp.pruner.BasePruningFunc):
    """timm ``SelectiveKernelAttn``: ``fc_select`` emits ``num_paths`` x C logits viewed as
    (paths, C). torch-pruning maps a channel ``i`` onto rows ``i*P .. i*P+P-1`` of that view
    (interleaved) where the rows are ``p*C + i``: the pruned copy runs but mixes the paths'
    attention. Handled as one layer whose input and output channels are the C channels."""

    TARGET_MODULES = None

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        c = int(layer.fc_reduce.in_channels)
        conv = tp.pruner.function.PrunerBox[tp.ops.OPTYPE.CONV]
        conv.prune_in_channels(layer.fc_reduce, list(idxs))
        rows = [p * c + int(i) for p in range(layer.num_paths) for i in idxs]
        conv.prune_out_channels(layer.fc_select, rows)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return int(layer.fc_reduce.in_channels)

    get_in_channels = get_out_channels

    def linked_dims(self, layer: nn.Module) -> list[tuple[nn.Module, str, float]]:
        """``(sub-layer, "in" | "out", channels there per channel of this layer)``."""
        return [(layer.fc_reduce, "in", 1.0), (layer.fc_select, "out", float(layer.num_paths))]

    def channel_magnitude(self, layer: nn.Module, idxs: Sequence[int], out: bool,
                          p: int) -> torch.Tensor:
        c = int(layer.fc_reduce.in_channels)
        index = torch.tensor([int(i) for i in idxs], dtype=torch.long)
        reduce_w = layer.fc_reduce.weight.detach().float().cpu().abs().pow(p)
        select_w = layer.fc_select.weight.detach().float().cpu().abs().pow(p).flatten(1).sum(1)
        total = reduce_w.transpose(0, 1).flatten(1).sum(1)
        total = total + select_w.view(layer.num_paths, c).sum(0)
        return total[index]


def _shown(names: tuple[str, ...]) -> str:
    return repr(names[0]) if len(names) == 1 else repr(names)


def _check_type(layer_type: Any) -> type[nn.Module]:
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        hint = (f"pass its class ({type(layer_type).__name__}), not an instance"
                if isinstance(layer_type, nn.Module)
                else "pass an nn.Module subclass, e.g. MyLayer")
        raise ConfigError(f"register_layer(layer_type={layer_type!r}): not an nn.Module subclass; "
                          f"{hint}")
    if layer_type.__module__.startswith("torch.nn."):
        raise ConfigError(f"register_layer(layer_type={layer_type.__name__}): a torch.nn layer, "
                          "which torch-pruning already prunes; register your own layer classes")
    return layer_type


def _check_names(channel_param: Any) -> tuple[str, ...]:
    names = (channel_param,) if isinstance(channel_param, str) else channel_param
    if (not isinstance(names, (tuple, list)) or not names
            or not all(isinstance(n, str) and n.isidentifier() and not keyword.iskeyword(n)
                       for n in names)):
        raise ConfigError(f"register_layer(channel_param={channel_param!r}): expected the "
                          "attribute name of a per-channel parameter or buffer, or a tuple of "
                          "names, e.g. channel_param='scale' or ('weight', 'bias')")
    return tuple(names)


def register_layer(layer_type: type[nn.Module], pruner: tp.pruner.BasePruningFunc | None = None,
                   *, channel_param: str | Sequence[str] | None = None,
                   channel_dim: int = 0) -> tp.pruner.BasePruningFunc:
    """Teach the engine to prune ``layer_type``; returns the pruner registered for it.

    Either pass ``pruner``, a torch-pruning customized pruner instance (a subclass of
    ``tp.pruner.BasePruningFunc`` with ``prune_out_channels``, ``prune_in_channels``,
    ``get_out_channels``, ``get_in_channels``), or ``channel_param``: the name (or a tuple of
    names) of the layer's per-channel parameters or buffers, indexed by channel along
    ``channel_dim`` (input and output channels are the same; a ``num_features``/``channels``/
    ``dim``-like int attribute is updated). Registering a type again replaces its pruner. Pruners
    match the exact type (as torch-pruning's do): register subclasses too, or pass the model to
    :func:`registered_pruners`.
    """
    layer_type = _check_type(layer_type)
    if (pruner is None) == (channel_param is None):
        given = "both" if pruner is not None else "neither"
        shown = "None" if pruner is None else f"<{type(pruner).__name__}>"
        raise ConfigError(
            f"register_layer({layer_type.__name__}, pruner={shown}, channel_param="
            f"{channel_param!r}): {given} given; pass exactly one: channel_param='scale' for a "
            "layer holding per-channel tensors, or pruner=MyPruner() (a tp.pruner."
            "BasePruningFunc) for anything else"
        )
    if channel_param is not None:
        if type(channel_dim) is not int:
            raise ConfigError(f"register_layer(channel_dim={channel_dim!r}): expected an int, the "
                              "dim of the tensors that indexes channels (0 by default)")
        pruner = ChannelParamPruner(_check_names(channel_param), channel_dim)
    elif not isinstance(pruner, tp.pruner.BasePruningFunc):
        hint = ("pass an instance: pruner=" + pruner.__name__ + "()"
                if isinstance(pruner, type) and issubclass(pruner, tp.pruner.BasePruningFunc)
                else "subclass tp.pruner.BasePruningFunc (prune_out_channels, prune_in_channels, "
                     "get_out_channels, get_in_channels), or use channel_param=")
        raise ConfigError(f"register_layer({layer_type.__name__}, pruner={pruner!r}): not a "
                          f"torch-pruning pruner; {hint}")
    CUSTOM_PRUNERS[layer_type] = pruner
    return pruner


def unregister_layer(layer_type: type[nn.Module]) -> None:
    """Forget ``layer_type``'s pruner (a no-op if none is registered)."""
    CUSTOM_PRUNERS.pop(layer_type, None)


def registered_pruners(model: nn.Module | None = None) -> dict[Any, tp.pruner.BasePruningFunc]:
    """A copy of the registry, for ``build_dependency(customized_pruners=...)``.

    With ``model``, subclasses of registered types found in it get their nearest registered
    base's pruner too (torch-pruning looks pruners up by exact type).
    """
    pruners: dict[Any, tp.pruner.BasePruningFunc] = dict(CUSTOM_PRUNERS)
    if model is not None:
        for module in model.modules():
            kind = type(module)
            if kind in pruners:
                continue
            for base in kind.__mro__[1:]:
                if base in CUSTOM_PRUNERS:
                    pruners[kind] = CUSTOM_PRUNERS[base]
                    break
    return pruners


def _pruner_of(module: Any) -> tp.pruner.BasePruningFunc | None:
    return CUSTOM_PRUNERS.get(type(module)) if isinstance(module, nn.Module) else None


def channel_params(module: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """``(parameter, channel dim)`` of the per-channel parameters of a layer handled here (its
    registered pruner knows them); empty for other layers, and for a user pruner that does not
    define ``channel_params(layer)``. A conv subclass lists only its extra tensors."""
    pruner = _pruner_of(module)
    fn = getattr(pruner, "channel_params", None)
    return list(fn(module)) if fn is not None else []


def linked_dims(model: nn.Module) -> dict[tuple[int, str], tuple[nn.Module, float]]:
    """Sub-layers whose channels follow a registered layer's (for the cost model):
    ``{(id(sub-layer), "in" | "out"): (registered layer, channels per channel of it)}``.

    torch-pruning does not trace inside a customized layer, so the convs inside it have no graph
    node; a pruner that prunes them says so with ``linked_dims(layer)``."""
    links: dict[tuple[int, str], tuple[nn.Module, float]] = {}
    for module in model.modules():
        fn = getattr(_pruner_of(module), "linked_dims", None)
        if fn is not None:
            for sub, direction, per in fn(module):
                links[(id(sub), direction)] = (module, float(per))
    return links


def custom_magnitude(group: Any, p: int = 2) -> torch.Tensor | None:
    """Per-root-channel ``sum |w|^p`` over the members of a torch-pruning group (full indices)
    whose layers are pruned by a pruner registered here that defines ``channel_magnitude``;
    ``None`` if there is none. torch-pruning's importance skips these layers: it recognises only
    its own pruning functions."""
    if len(group) == 0:
        return None
    total = torch.zeros(len(group[0].idxs))
    found = False
    for i, (dep, idxs) in enumerate(group):
        layer = dep.target.module
        pruner = _pruner_of(layer)
        fn = getattr(pruner, "channel_magnitude", None)
        if fn is None or getattr(dep.handler, "__self__", None) is not pruner:
            continue
        plain = tp._helpers.to_plain_idxs(idxs)
        root = group[i].root_idxs if group[i].root_idxs is not None else plain
        out = dep.handler == pruner.prune_out_channels
        local = fn(layer, plain, out, p)
        total.index_add_(0, torch.tensor([int(r) for r in root], dtype=torch.long), local)
        found = True
    return total if found else None


def _register_builtin(module_name: str, class_name: str, pruner: tp.pruner.BasePruningFunc) -> None:
    try:
        layer_type = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):  # timm missing, or a version without the class
        return
    CUSTOM_PRUNERS.setdefault(layer_type, pruner)


def _register_builtins() -> None:
    """Layers with per-channel state that torch-pruning does not prune (timm, if installed)."""
    for cls in ("ScaledStdConv2d", "ScaledStdConv2dSame"):
        _register_builtin("timm.layers.std_conv", cls, ConvChannelParamPruner(("gain",)))
    _register_builtin("timm.models.metaformer", "Scale", ChannelParamPruner(("scale",)))
    _register_builtin("timm.layers.blur_pool", "BlurPool2d", _BlurPoolPruner(("filt",)))
    _register_builtin("timm.layers.selective_kernel", "SelectiveKernelAttn",
                      _SelectiveKernelAttnPruner())


_register_builtins()
