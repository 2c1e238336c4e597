"""tradeoff: threshold search and accuracy-speed trade-off analysis for multi-exit networks.

The public API, loaded lazily (PEP 562 module `__getattr__`): `import tradeoff` and the
NumPy names (`load_cache`, `run_search`, `ExitRule`, ...) load neither torch nor
matplotlib; the model, training, runtime and plotting names import them on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "ExitCache": "tradeoff.cache.format",
    "load_cache": "tradeoff.cache.format",
    "write_cache": "tradeoff.cache.format",
    "cache_checkpoint": "tradeoff.cache.build",
    "ExitRule": "tradeoff.policy.rule",
    "read_rule": "tradeoff.policy.rule_file",
    "write_rule": "tradeoff.policy.rule_file",
    "score_thresholds": "tradeoff.policy.scoring",
    "score_rule": "tradeoff.policy.scoring",
    "run_search": "tradeoff.search.run",
    "SearchResult": "tradeoff.search.result",
    "Pick": "tradeoff.search.settings",
    "plot_pareto": "tradeoff.report.pareto_plot",
    "plot_exits": "tradeoff.report.exits_plot",
    "create_model": "tradeoff.models.registry",
    "register_model": "tradeoff.models.registry",
    "EarlyExitModel": "tradeoff.runtime.early_exit",
    "train_model": "tradeoff.training.loop",
}
__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'tradeoff' has no attribute {name!r}")
    if name in ("create_model", "register_model"):
        importlib.import_module("tradeoff.models")  # registers the built-in families
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
