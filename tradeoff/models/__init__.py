"""Model families; importing this package registers every built-in builder."""

from tradeoff.models.registry import create_model, list_models, register_model, resolve_builder

__all__ = ["create_model", "list_models", "register_model", "resolve_builder"]
