"""Model families; importing this package registers every built-in builder."""

from tradeoff.models.registry import create_model, list_models, register_model, resolve_builder
from tradeoff.models import scan, small  # noqa: F401  (registers scan_resnet*, scan_small)
from tradeoff.models import attach, sidenet, adjoined  # noqa: F401
from tradeoff.models import compact  # noqa: F401  (registers scan_cnn)

__all__ = ["create_model", "list_models", "register_model", "resolve_builder"]
