"""A matplotlib `Figure` built directly (no pyplot: no global figure registry, no global
style change, nothing to `show()`) on the Agg canvas, and its PNG bytes. matplotlib is
imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import io

DPI = 150


def new_figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig, *, dpi: int = DPI) -> bytes:
    """The figure rendered as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
