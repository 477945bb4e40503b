"""Find the per-layer MLP activation modules of a decoder and hook their outputs.

Hooks are found by module *name* (``layers.<i>.mlp.act_fn``), not by attribute chains, so the same code works on a
plain Hugging Face model, a PEFT-wrapped one (``base_model.model.model.layers...``) and one wrapped for distributed
training (``module.model.layers...``). A forward that never reaches a hooked ``act_fn`` (a fused MLP kernel, a
wrong pattern) raises :class:`HookError` instead of silently counting nothing.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

import torch
from torch import nn

from ..errors import HarnessError

# Layer i's gated-MLP activation module: act_fn(gate_proj(x)) is what a "neuron" is (docs/science.md, Activation).
ACT_FN_PATTERN = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.act_fn$")

# fn(layer_index, act_fn_output) -> replacement output, or None to keep it.
LayerHookFn = Callable[[int, torch.Tensor], "torch.Tensor | None"]


class HookError(HarnessError):
    """The model cannot be hooked the way neuron counting / deactivation needs."""


def find_act_fns(model: nn.Module, pattern: re.Pattern[str] = ACT_FN_PATTERN) -> list[nn.Module]:
    """Return the ``act_fn`` module of every decoder layer, indexed by layer (0..L-1).

    Raises :class:`HookError` when no module matches, when layer indices have gaps, or when one activation module is
    shared by several layers (its outputs could not be told apart).
    """
    found: dict[int, tuple[str, nn.Module]] = {}
    # remove_duplicate=False: a module shared between layers must show up under every name so it can be refused.
    for name, module in model.named_modules(remove_duplicate=False):
        match = pattern.search(name)
        if match is None:
            continue
        layer = int(match.group(1))
        if layer in found and found[layer][1] is not module:
            raise HookError(
                f"two modules claim layer {layer}: {found[layer][0]!r} and {name!r}; pass a model with one decoder"
            )
        found.setdefault(layer, (name, module))
    if not found:
        raise HookError(
            f"no module of {type(model).__name__} matches 'layers.<i>.mlp.act_fn': neuron hooks need a gated MLP "
            "with a per-layer act_fn module (Llama, Mistral, Qwen2, Gemma...); fused MLP kernels remove it"
        )
    layers = sorted(found)
    if layers != list(range(len(layers))):
        missing = sorted(set(range(layers[-1] + 1)) - set(layers))
        raise HookError(
            f"act_fn modules found for layers {layers[0]}..{layers[-1]} but not {missing}: model is partial"
        )
    modules = [found[i][1] for i in layers]
    if len({id(m) for m in modules}) != len(modules):
        raise HookError(
            "one act_fn module object is shared by several layers, so its outputs cannot be attributed to a layer; "
            "give every layer its own activation module"
        )
    return modules


class ActFnHooks:
    """Context manager: call ``fn(layer, output)`` on the act_fn output of each chosen layer during every forward.

    On exit (also on error) every hook it added is removed. Each forward of ``model`` itself is checked: when it
    finishes without having passed through every hooked layer, :class:`HookError` is raised (a fused MLP or a
    pattern that matches modules the forward never calls would otherwise give silent zeros). ``checked``: the module
    whose forwards are checked when it is not ``model`` itself (counting calls the decoder stack inside it). Forwards
    that go through neither (e.g. ``generate`` on a PEFT model calls the inner model) are hooked but not checked.
    """

    def __init__(self, model: nn.Module, fn: LayerHookFn, layers: Iterable[int] | None = None,
                 checked: nn.Module | None = None):
        self.model = model
        self.checked = model if checked is None else checked  # the module whose forwards are checked
        self.fn = fn
        self.act_fns = find_act_fns(model)
        self.layers = tuple(range(len(self.act_fns))) if layers is None else tuple(sorted(set(layers)))
        bad = [i for i in self.layers if not 0 <= i < len(self.act_fns)]
        if bad:
            raise HookError(f"layers {bad} do not exist: the model has {len(self.act_fns)} layers")
        self._fired = [0] * len(self.act_fns)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def num_layers(self) -> int:
        return len(self.act_fns)

    def __enter__(self) -> "ActFnHooks":
        try:
            for layer in self.layers:
                self._handles.append(self.act_fns[layer].register_forward_hook(self._make_hook(layer)))
            self._handles.append(self.checked.register_forward_pre_hook(self._reset))
            self._handles.append(self.checked.register_forward_hook(self._check))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_hook(self, layer: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor):
            self._fired[layer] += 1
            return self.fn(layer, output)

        return hook

    def _reset(self, module: nn.Module, inputs: tuple) -> None:
        for layer in self.layers:
            self._fired[layer] = 0

    def _check(self, module: nn.Module, inputs: tuple, output: object) -> None:
        silent = [layer for layer in self.layers if self._fired[layer] == 0]
        if silent:
            raise HookError(
                f"the forward of {type(self.checked).__name__} never ran layers.{silent}.mlp.act_fn: the MLP bypasses "
                "its act_fn module (fused kernel such as Liger?); disable the fused MLP to count or deactivate neurons"
            )
