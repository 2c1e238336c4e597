"""tradeoff: find the per-exit thresholds that make a multi-exit network pay off."""

__version__ = "0.1.0"
