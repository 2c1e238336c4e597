"""Name -> builder registry (timm's habit): `@register_model`, `create_model(name, **kw)`.

A user's own network is reached as `pkg.module:builder`, imported on demand, with the
current folder on the import path (as `python -m` has it), so `--arch mymod:build` finds
./mymod.py without PYTHONPATH.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from typing import Callable

_BUILDERS: dict[str, Callable] = {}


def register_model(builder: Callable) -> Callable:
    """Record `builder` under its function name; a second builder with that name raises."""
    name = builder.__name__
    if name in _BUILDERS:
        raise ValueError(f"model {name!r} is already registered (by {_BUILDERS[name].__module__})")
    _BUILDERS[name] = builder
    return builder


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def resolve_builder(name: str) -> Callable:
    """The builder for a registered name or a `pkg.module:builder` path.

    Raises:
        ValueError: unknown name (listing the known ones) or an import path that fails.
    """
    if ":" in name:
        module_name, _, attr = name.partition(":")
        _current_folder_on_path()
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(
                f"--arch {name!r}: cannot import module {module_name!r} ({exc}); run from the folder that holds "
                f"{module_name.replace('.', '/')}.py or add its folder to PYTHONPATH"
            ) from None
        builder = getattr(module, attr, None)
        if not callable(builder):
            raise ValueError(f"--arch {name!r}: module {module_name!r} has no callable {attr!r}")
        return builder
    if name not in _BUILDERS:
        if "." in name:
            module_name, _, attr = name.rpartition(".")
            raise ValueError(f"unknown model {name!r}; did you mean {module_name}:{attr}? (a builder in a module "
                             "is named module:function)")
        near = difflib.get_close_matches(name, list_models(), n=3)
        guess = f"; did you mean {' or '.join(near)}?" if near else ""
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(list_models())} "
            f"(or give your own as pkg.module:builder){guess}"
        )
    return _BUILDERS[name]


def _current_folder_on_path() -> None:
    """Put the current folder on sys.path (last, so it never shadows an installed package)."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)


def create_model(name: str, **kwargs):
    """Build a model by registered name or `pkg.module:builder`, passing `kwargs` on."""
    builder = resolve_builder(name)
    try:
        return builder(**kwargs)
    except TypeError as exc:
        raise ValueError(f"cannot build {name!r} with arguments {kwargs}: {exc}") from None
