"""Reading official PyTorch checkpoints safely, and strict state_dict loading with errors a user can act on.

Two kinds of files reach us:

- plain state_dicts (SimSwap's ``latest_net_G.pth``): read with ``torch.load(weights_only=True)``, torch's own
  restricted unpickler;
- whole pickled modules (SimSwap's ``arcface_checkpoint.tar``): their classes live in a repository we do not
  import. They are read through :func:`restricted_pickle_module`, a ``pickle.Unpickler`` whose ``find_class``
  resolves only an explicit allow-list (torch's tensor rebuild functions, a few ``torch.nn`` layer classes,
  ``OrderedDict``, and a caller's map of foreign class names onto our own classes) and refuses every other
  global, naming it. Nothing from such a file is used as-is: :func:`state_dict_from` walks the unpickled
  module tree's ``_parameters``/``_buffers``/``_modules`` dictionaries (calling none of its methods or hooks)
  and the tensors are copied into a freshly built module by :func:`load_state_strict`.
"""

from __future__ import annotations

import _compat_pickle
import pickle
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from swapwatch.errors import ModelError

# How many names of each kind an error message lists before "...".
SHOWN = 5


def _classes_by_name(classes: Iterable[type]) -> dict[tuple[str, str], Any]:
    return {(cls.__module__, cls.__qualname__): cls for cls in classes}


# torch.nn classes a pickled face model is made of (their import paths have been stable since torch 1.0).
# Unpickling one creates the object without running __init__ and only fills its __dict__.
TORCH_NN_CLASSES: Mapping[tuple[str, str], Any] = types.MappingProxyType(_classes_by_name([
    nn.Sequential, nn.ModuleList, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d,
    nn.PReLU, nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d, nn.ReflectionPad2d, nn.Upsample, nn.DataParallel,
]))

# What torch.save itself writes around tensors and modules. Storage classes are resolved by torch.load's own
# wrapper before our find_class is asked; tensor subclasses (_rebuild_from_type_v2, which calls an arbitrary
# function) are deliberately absent.
TORCH_CORE_GLOBALS: Mapping[tuple[str, str], Any] = types.MappingProxyType({
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,  # nn.Module's _non_persistent_buffers_set, pickled with protocol 2
    ("torch", "device"): torch.device,  # DataParallel keeps its source device
    ("torch", "Size"): torch.Size,
})


def restricted_pickle_module(allowed: Mapping[tuple[str, str], Any], *, source: str = "checkpoint"
                             ) -> types.ModuleType:
    """A stand-in for the ``pickle`` module (``Unpickler`` and ``load``) for ``torch.load(pickle_module=...)``.

    Its unpickler resolves a global ``(module, name)`` only through ``allowed`` plus
    :data:`TORCH_CORE_GLOBALS`; anything else raises :class:`ModelError` naming the global. A fresh module is
    built per call, so allow-lists never leak between loaders.
    """
    table = types.MappingProxyType({**TORCH_CORE_GLOBALS, **allowed})

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            # torch.save writes protocol 2, so Python 2 names appear (``__builtin__.set``); map them as
            # pickle's own find_class does before looking them up.
            key = _compat_pickle.NAME_MAPPING.get((module, name))
            if key is None:
                key = (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
            try:
                return table[key]
            except (KeyError, TypeError):
                raise ModelError(f"{source}: refusing to unpickle global '{module}.{name}' "
                                 "(not on this loader's allow-list)") from None

    def load(file, **kwargs) -> Any:  # torch's legacy format reads its header with pickle_module.load
        return RestrictedUnpickler(file, **kwargs).load()

    module = types.ModuleType("swapwatch_restricted_pickle")
    module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    return module


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_checkpoint(path: str | Path, *, allowed: Mapping[tuple[str, str], Any] | None = None,
                    what: str = "checkpoint") -> Any:
    """Unpickle ``path`` on the CPU.

    With ``allowed`` None only torch's ``weights_only`` loader is used (plain state_dicts); otherwise the
    restricted unpickler with that allow-list. Every failure is a one-line :class:`ModelError`.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{what} checkpoint not found: {path}")
    try:
        if allowed is None:
            return torch.load(path, map_location="cpu", weights_only=True)
        pickle_module = restricted_pickle_module(allowed, source=path.name)
        # weights_only=False is safe only because every global goes through the allow-list above.
        return torch.load(path, map_location="cpu", pickle_module=pickle_module, weights_only=False)
    except ModelError:
        raise
    except Exception as exc:  # corrupt zip, truncated pickle, torch's weights_only refusal, ...
        hint = ""
        if allowed is None and "weights_only" in str(exc):
            hint = " (it is not a plain state_dict)"
        raise ModelError(f"cannot read {what} checkpoint {path.name}{hint}: {_first_line(exc)}") from exc


def _plain_dict(obj: Any, field: str, where: str) -> dict:
    value = vars(obj).get(field, {}) if hasattr(obj, "__dict__") else None
    if not isinstance(value, dict):
        raise ModelError(f"{where}: the pickled module's {field} is a {type(value).__name__}, not a dict")
    return value


def _module_state(module: nn.Module, prefix: str, out: dict[str, torch.Tensor], where: str) -> None:
    """Tensors of an unpickled module tree, read from its dictionaries only (no methods, no hooks)."""
    non_persistent = vars(module).get("_non_persistent_buffers_set", set())
    non_persistent = non_persistent if isinstance(non_persistent, set) else set()
    for field in ("_parameters", "_buffers"):
        for name, tensor in _plain_dict(module, field, where).items():
            if tensor is None or (field == "_buffers" and name in non_persistent):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise ModelError(f"{where}: {prefix}{name} is a {type(tensor).__name__}, not a tensor")
            out[prefix + str(name)] = tensor.detach()
    for name, child in _plain_dict(module, "_modules", where).items():
        if child is None:
            continue
        if not isinstance(child, nn.Module):
            raise ModelError(f"{where}: submodule {prefix}{name} is a {type(child).__name__}")
        _module_state(child, f"{prefix}{name}.", out, where)


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop a DataParallel ``module.`` prefix when every key has it (SimSwap's releases have none)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


# Keys under which training scripts nest the weights (SimSwap's older ArcFace loader read ckpt['model']).
_NESTED_KEYS = ("state_dict", "model", "netG", "net", "params")


def state_dict_from(obj: Any, path: str | Path, *, root_types: tuple[type, ...] = ()) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint object: a state_dict, a dict wrapping one, or an unpickled module tree.

    ``root_types`` restricts which module classes may be the root of a pickled model (a DataParallel
    wrapper is looked through).
    """
    where = Path(path).name
    if isinstance(obj, nn.DataParallel):
        obj = _plain_dict(obj, "_modules", where).get("module")
    if isinstance(obj, nn.Module):
        if root_types and not isinstance(obj, root_types):
            names = ", ".join(t.__name__ for t in root_types)
            raise ModelError(f"{where} holds a pickled {type(obj).__name__}, expected {names}")
        state: dict[str, torch.Tensor] = {}
        _module_state(obj, "", state, where)
        return state
    if isinstance(obj, Mapping):
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return _strip_prefix(obj)
        for key in _NESTED_KEYS:
            if key in obj:
                return state_dict_from(obj[key], path, root_types=root_types)
        keys = ", ".join(repr(k) for k in list(obj)[:SHOWN])
        raise ModelError(f"{where} is a dict without weights (keys: {keys or 'none'})")
    raise ModelError(f"{where} holds a {type(obj).__name__}, not a model or a state_dict")


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f", ... (+{len(items) - SHOWN})" if len(items) > SHOWN else "")


def state_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """A one-line description of how ``state`` differs from ``model``'s state_dict, or None if it fits."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_listing(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_listing(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches ({_listing(shapes)})")
    return "; ".join(parts) or None


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path, *,
                      fill_num_batches_tracked: bool = False, description: str | None = None) -> nn.Module:
    """Copy ``state`` into ``model`` requiring the same keys and shapes; :class:`ModelError` otherwise.

    ``fill_num_batches_tracked`` tolerates BatchNorm counters missing from files of old torch versions
    (the counter is unused in eval mode) where the layer's running statistics are present.
    """
    state = _strip_prefix(state)
    if fill_num_batches_tracked:
        for key, value in model.state_dict().items():
            layer = key[: -len("num_batches_tracked")]
            if key.endswith("num_batches_tracked") and key not in state and f"{layer}running_mean" in state:
                state[key] = torch.zeros_like(value)
    problem = state_mismatch(model, state)
    name = description or type(model).__name__
    if problem:
        raise ModelError(f"{Path(path).name} does not match {name} "
                         f"({len(model.state_dict())} keys expected): {problem}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a tensor of a type that cannot be copied
        raise ModelError(f"{Path(path).name} does not load into {name}: {_first_line(exc)}") from exc
    return model
