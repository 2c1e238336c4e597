"""Names and colours shared by every picture of a run (matplotlib PNGs and the plotly report)."""

METHOD_LABELS = {
    "nsga": "NSGA-II",
    "global": "one global threshold",
    "msdnet": "MSDNet budget rule",
    "random": "random search",
    "grid": "exhaustive grid",
    "nsga-per-class": "NSGA-II per-class",
}
METHOD_COLORS = {"nsga": "#1f77b4", "global": "#ff7f0e", "msdnet": "#2ca02c", "random": "#9467bd", "grid": "#8c564b",
                 "nsga-per-class": "#e377c2"}
CHOSEN_COLOR = "#d62728"
# Who answers a sample no exit accepted (`ExitRule.fallback`), as the pictures say it.
FALLBACK_TEXT = {"deepest": "answers the rest", "ensemble": "the rest: ensemble of all exits",
                 "most-confident": "the rest: most confident exit"}
PER_CLASS_TEXT = "median of per-class"  # what a per-class point's one threshold per exit shows
