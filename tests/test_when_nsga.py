"""When the genetic search matters (issue 15, item 12): it ties the baselines with few exits and
beats them with many, and the search summary says which."""

from tradeoff.cache.synthetic import synthetic_cache
from tradeoff.report.documents import genetic_search_note, summary_text
from tradeoff.search.run import run_search

K8 = (0.45, 0.55, 0.63, 0.70, 0.75, 0.79, 0.82, 0.84)


def test_nsga_beats_every_baseline_at_eight_exits_and_says_so():
    cache = synthetic_cache(2000, 10, K8, tuple(1e8 * (k + 1) for k in range(8)), seed=1)
    result = run_search(cache, pick=None, pop=40, gens=25, seed=0)
    volumes = {f.method: f.hypervolume for f in result.fronts}
    nsga = volumes.pop("nsga")
    assert nsga > 1.002 * max(volumes.values())
    note = genetic_search_note(result)
    assert note.startswith("NSGA-II vs the best baseline (") and "found points the baselines missed" in note
    assert note in summary_text(result)


def test_with_three_exits_the_summary_says_the_baselines_cover_the_space():
    cache = synthetic_cache(2000, 10, (0.7, 0.8, 0.84), (1e8, 2e8, 3e8), seed=1)
    result = run_search(cache, pick=None, pop=40, gens=25, seed=0)
    note = genetic_search_note(result)
    assert "with 2 threshold(s) the baselines already cover the space" in note and "make bench: when_nsga" in note
