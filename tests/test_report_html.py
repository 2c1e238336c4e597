"""report.html: gathered data, figures, bad input, and the page in a real headless Chromium.

The browser tests drive Debian's `chromium` through the DevTools protocol: they load the
file, count the drawn points, move the mouse onto a point and read its hover label, click
one and read the panel, record every network request (there must be none but the file
itself), and save a screenshot under results/report-test/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tradeoff.report import rundir
from tradeoff.report import html as report_html
from tradeoff.report import html_figures as report_figures
from tradeoff.report.html_page import report_page
from tradeoff.cache.format import load_cache, write_cache
from tradeoff.commands import main
from tradeoff.search.run import run_search
from tradeoff.search.settings import Pick
from tradeoff.cache.synthetic import synthetic_cache

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's `chromium` package (/usr/bin/chromium): "
                                    "apt-get install chromium")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real run directory of a small synthetic 3-exit search, its cache beside it."""
    base = tmp_path_factory.mktemp("report_html")
    cache_path = base / "cache.npz"
    write_cache(cache_path, synthetic_cache(num_samples=1200, num_classes=10, exit_accuracies=(0.7, 0.85, 0.9), seed=3))
    result = run_search(load_cache(cache_path), pick=Pick("target_acc", 0.85), pop=24, gens=8, seed=0, cache_path=cache_path)
    run = base / "run"
    rundir.write_run(run, result)
    return run, result


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# --------------------------------------------------------------------------- gathered data
def test_gather_matches_the_run_files(run_dir):
    run, result = run_dir
    data = report_html.gather_report(run)
    assert data.exit_names == ("exit1", "exit2", "exit3") and data.num_exits == 3
    assert data.fronts[0].method == "nsga" and {f.method for f in data.fronts} == {f.method for f in result.fronts}
    nsga = result.front("nsga")
    front = data.fronts[0]
    np.testing.assert_array_equal(front.thresholds, nsga.thresholds)
    np.testing.assert_array_equal(front.val_accuracy, nsga.val.accuracy)
    np.testing.assert_array_equal(front.test_flops, nsga.test.flops)
    # exit shares recomputed from the cache agree with the searched ones, on val and test
    np.testing.assert_allclose(front.val_fractions, nsga.val.exit_fractions, atol=1e-12)
    np.testing.assert_allclose(front.test_fractions, nsga.test.exit_fractions, atol=1e-12)
    assert data.chosen.thresholds == result.chosen.thresholds
    assert data.chosen.test_ci95 == pytest.approx(result.chosen.test_accuracy_ci95)
    assert data.certified is None and data.exit_ms is None
    conf = data.confidence
    assert conf.right.shape == conf.wrong.shape == (3, report_html.HISTOGRAM_BINS)
    assert (conf.right + conf.wrong).sum(axis=1).tolist() == [result.split_sizes["val"]] * 3
    # exit 3's right answers over val = its accuracy alone
    assert conf.right[2].sum() / result.split_sizes["val"] == pytest.approx(result.exits[2].val_accuracy)


def test_without_the_cache_the_report_says_so_and_keeps_the_csv_shares(run_dir, tmp_path):
    run, result = run_dir
    lone = copy_run(run, tmp_path / "lone")
    doc = json.loads((lone / "thresholds.json").read_text())
    doc["cache"] = str(tmp_path / "moved.npz")
    (lone / "thresholds.json").write_text(json.dumps(doc))
    data = report_html.gather_report(lone)
    assert data.confidence is None and data.fronts[0].test_fractions is None
    np.testing.assert_allclose(data.fronts[0].val_fractions, result.front("nsga").val.exit_fractions, atol=1e-12)
    assert any("not found or changed" in n for n in data.notes)
    page = report_page(data)
    assert "confidence histograms need the run&#x27;s cache" in page or "not found or changed" in page
    # a cache given explicitly is used when its sha256 matches
    assert report_html.gather_report(lone, cache_path=run.parent / "cache.npz").confidence is not None


def test_certified_point_and_latency_are_drawn_when_the_run_has_them(run_dir, tmp_path):
    run, result = run_dir
    d = copy_run(run, tmp_path / "cert")
    doc = json.loads((d / "thresholds.json").read_text())
    doc["guarantee"] = {"delta": 0.1, "accuracy_lower_bound": 0.8123, "p_value": 0.01}  # search.guarantee's keys
    (d / "thresholds.json").write_text(json.dumps(doc))
    summary = json.loads((d / "summary.json").read_text())
    summary["latency"] = {"batch_size": 1, "exit_path_ms": [0.5, 1.0, 2.0]}  # search.latency_report's keys
    (d / "summary.json").write_text(json.dumps(summary))
    data = report_html.gather_report(d)
    assert data.certified.label == "certified (delta = 0.1; accuracy >= 0.8123)" and data.exit_ms == (0.5, 1.0, 2.0)
    fig = report_figures.pareto_figure(data)
    names = [t.name for t in fig.data]
    assert "certified (delta = 0.1; accuracy >= 0.8123) (val)" in names
    assert "latency:" in fig.data[0].hovertemplate
    # ms of a point = its exit shares . per-exit ms
    cols = report_figures.customdata_columns(3)
    row = np.asarray(fig.data[0].customdata)[0]
    assert row[cols["val_ms"]] == pytest.approx(row[cols["val_fractions"]:cols["val_fractions"] + 3] @ [0.5, 1.0, 2.0], rel=1e-5)


# --------------------------------------------------------------------------- figures
def test_thinning_keeps_ends_and_caps_points():
    x = np.linspace(1e6, 1e8, 10_000)
    y = 1 - np.exp(-x / 2e7)
    keep = report_figures.thin_indices(x, y, 1500)
    assert len(keep) <= 1500 and keep[0] == 0 and keep[-1] == 9999 and np.all(np.diff(keep) > 0)
    assert report_figures.thin_indices(x[:50], y[:50], 1500).tolist() == list(range(50))


def test_cheapest_meeting():
    acc, flops = np.array([0.7, 0.8, 0.8, 0.9]), np.array([1.0, 2.0, 2.0, 3.0])
    assert report_figures.cheapest_meeting(acc, flops, 0.75) == 1
    assert report_figures.cheapest_meeting(acc, flops, 0.9) == 3
    assert report_figures.cheapest_meeting(acc, flops, 0.95) is None


def test_pareto_figure_slider_marks_the_cheapest_point_on_val_and_test(run_dir):
    run, _ = run_dir
    data = report_html.gather_report(run)
    fig = report_figures.pareto_figure(data, target=0.85)
    front = data.fronts[0]
    slider = fig.layout.sliders[0]
    step = slider.steps[slider.active]
    target = float(step.label)
    assert target == pytest.approx(0.85)
    iv = int(np.flatnonzero(front.val_accuracy >= target)[np.argmin(front.val_flops[front.val_accuracy >= target])])
    ok = front.test_accuracy >= target
    it = int(np.flatnonzero(ok)[np.argmin(front.test_flops[ok])])
    xs, ys = step.args[0]["x"], step.args[0]["y"]
    assert xs[0][0] == pytest.approx(front.val_flops[iv] / 1e6) and ys[0][0] == front.val_accuracy[iv]
    assert xs[1][0] == pytest.approx(front.test_flops[it] / 1e6) and ys[1][0] == front.test_accuracy[it]
    marks = step.args[2]
    assert fig.data[marks[0]].name == "cheapest meeting the target (val)"
    assert "no nsga point reaches it" in slider.steps[-1].args[1]["annotations[0].text"] or slider.steps[-1].args[0]["x"][0][0] is not None


def test_a_large_front_is_drawn_thinned_but_marks_use_every_point(run_dir, tmp_path):
    run, _ = run_dir
    data = report_html.gather_report(run)
    rng = np.random.default_rng(0)
    n = 10_000
    flops = np.sort(rng.uniform(1e8, 3e8, n))
    acc = np.sort(rng.uniform(0.7, 0.9, n))
    big = report_html.FrontData("nsga", rng.uniform(0, 1, (n, 2)), acc, flops, acc - 0.01, flops * 1.01,
                                rng.dirichlet(np.ones(3), n), rng.dirichlet(np.ones(3), n))
    data = report_html.ReportData(**{**data.__dict__, "fronts": (big,) + data.fronts[1:]})
    fig = report_figures.pareto_figure(data, max_points=1500)
    drawn = len(fig.data[0].x)
    assert drawn <= 1500 + report_figures.SLIDER_STEPS * 2 and drawn < n
    assert f"of {n} drawn" in fig.data[0].name
    for step in fig.layout.sliders[0].steps:
        t = float(step.label)
        want = acc[np.argmax(acc >= t)] if acc.max() >= t else None  # sorted: the first reaching it is the cheapest
        assert step.args[0]["y"][0][0] == want


# --------------------------------------------------------------------------- bad input
def test_missing_file_is_one_line_naming_it(run_dir, tmp_path, capsys):
    run, _ = run_dir
    d = copy_run(run, tmp_path / "missing")
    (d / "pareto.csv").unlink()
    assert main(["report", str(d)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pareto.csv is missing" in err
    assert not (d / "report.html").exists()


def test_other_version_is_one_line_naming_the_file(run_dir, tmp_path):
    run, _ = run_dir
    d = copy_run(run, tmp_path / "future")
    doc = json.loads((d / "summary.json").read_text())
    doc["version"] = 2
    (d / "summary.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"summary\.json was written by another version of tradeoff \(format "
                                         r"'tradeoff-summary' version 2; .* reads 'tradeoff-summary' version 1\)"):
        report_html.write_report(d)
    del doc["exits"]
    doc["version"] = 1
    (d / "summary.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"summary\.json is not a complete tradeoff run file \(missing key 'exits'\)"):
        report_html.write_report(d)
    with pytest.raises(FileNotFoundError, match=r"run directory .*nowhere does not exist"):
        report_html.write_report(tmp_path / "nowhere")


def test_failed_rebuild_leaves_the_old_page_whole(run_dir, tmp_path, monkeypatch):
    run, _ = run_dir
    d = copy_run(run, tmp_path / "atomic")
    report_html.write_report(d)
    before = (d / "report.html").read_bytes()

    def disk_full(fd):  # fails after the new page's bytes went to the temporary file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        report_html.write_report(d)
    monkeypatch.undo()
    assert (d / "report.html").read_bytes() == before  # the old page, whole
    assert sorted(p.name for p in d.iterdir()) == sorted([p.name for p in run.iterdir()] + ["report.html"])


def test_wrong_cache_given_is_refused(run_dir, tmp_path):
    run, _ = run_dir
    other = tmp_path / "other.npz"
    write_cache(other, synthetic_cache(num_samples=200, num_classes=10, exit_accuracies=(0.7, 0.85, 0.9), seed=4))
    with pytest.raises(ValueError, match=r"--cache .*other\.npz is not the cache this run was searched on"):
        report_html.gather_report(run, cache_path=other)


def test_report_command_writes_a_self_contained_page(run_dir, tmp_path, capsys):
    run, _ = run_dir
    d = copy_run(run, tmp_path / "cmd")
    assert main(["report", str(d)]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (d / "report.html").read_text()
    assert "<script src=" not in page and "<link" not in page  # nothing loaded from elsewhere (the browser test checks requests)
    from plotly.offline import get_plotlyjs_version

    assert f"plotly.js v{get_plotlyjs_version()}" in page  # the library's own banner: it is inline


# --------------------------------------------------------------------------- the browser
class Browser:
    """Headless Chromium driven through the DevTools protocol (one page)."""

    def __init__(self, tmp: Path):
        import websocket  # websocket-client

        self.profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp))
        self.proc = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "--remote-allow-origins=*",
             "--window-size=1400,1500", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30)
        self.next_id, self.events = 0, []

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, name: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("method") == name for e in self.events):
                return
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(name)

    def js(self, expression: str):
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"page script failed: {out['exceptionDetails']}")
        return out["result"].get("value")

    def mouse(self, kind: str, x: float, y: float):
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left" if kind != "mouseMoved" else "none",
                  clickCount=1 if kind != "mouseMoved" else 0)

    def close(self):
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            shutil.rmtree(self.profile, ignore_errors=True)


@needs_chromium
def test_page_in_headless_chromium(run_dir, tmp_path):
    run, result = run_dir
    d = copy_run(run, tmp_path / "browser")
    cache = run.parent / "cache.npz"  # the run records it relative to itself: give it after the copy
    page_path = report_html.write_report(d, cache_path=cache)
    data = report_html.gather_report(d, cache_path=cache)
    expected_points = len(report_figures.pareto_figure(data).data[0].x)
    browser = Browser(tmp_path)
    try:
        browser.call("Network.enable")
        browser.call("Page.enable")
        browser.call("Page.navigate", url=page_path.as_uri())
        browser.wait_event("Page.loadEventFired")
        # the plots exist and the reported front has every drawn point
        assert browser.js("document.querySelectorAll('#tradeoff-pareto .main-svg').length") >= 1
        count = browser.js("document.querySelectorAll('#tradeoff-pareto .scatterlayer .trace')[0]"
                           ".querySelectorAll('path.point').length")
        assert count == expected_points == result.front("nsga").size
        # hover: move the mouse onto a point; the label carries its thresholds. Other fronts run
        # close to it, so they are hidden first, as a user would by clicking their legend entries.
        browser.js("(() => { const gd = document.getElementById('tradeoff-pareto');"
                   "return Plotly.restyle(gd, {visible: false}, gd.data.map((_, j) => j).slice(1)).then(() => 1); })()")
        i = count // 2
        box = browser.js(f"(() => {{ const r = document.querySelectorAll('#tradeoff-pareto .scatterlayer .trace')[0]"
                         f".querySelectorAll('path.point')[{i}].getBoundingClientRect();"
                         "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        browser.mouse("mouseMoved", *box)
        time.sleep(0.3)
        label = browser.js("document.querySelector('#tradeoff-pareto .hoverlayer').textContent")
        t = data.fronts[0].thresholds[i]
        assert f"exit1 ≥ {t[0]:.4f}" in label and f"exit2 ≥ {t[1]:.4f}" in label, label
        assert "speed-up" in label and "leave (test)" in label
        # click: the panel shows that point and the threshold line moves to it
        browser.mouse("mousePressed", *box)
        browser.mouse("mouseReleased", *box)
        time.sleep(0.3)
        panel = browser.js("document.getElementById('tradeoff-point').textContent")
        assert f"exit1 ≥ {t[0]:.4f}" in panel, panel
        x0 = browser.js("document.getElementById('tradeoff-confidence').layout.shapes[0].x0")
        assert x0 == pytest.approx(t[0], abs=1e-6)
        bars = browser.js("Array.from(document.getElementById('tradeoff-exits').data[1].y)")
        assert bars == pytest.approx(list(data.fronts[0].test_fractions[i]), abs=1e-6)
        shot = browser.call("Page.captureScreenshot", format="png")["data"]
        # no network: every request the page made is the file itself or inline data
        urls = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
        assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls
    finally:
        browser.close()
    import base64

    from tradeoff.fileio import write_bytes_atomic

    png = base64.b64decode(shot)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    write_bytes_atomic(REPO / "results" / "report-test" / "screenshot.png", png)


# --------------------------------------------------------------------------- other exit rules, end to end
RULES = {
    "ensemble": ["--fallback", "ensemble"],
    "most-confident": ["--fallback", "most-confident"],
    "per-class": ["--per-class"],
    "patience": ["--confidence", "patience"],
    "delta": ["--delta", "0.1"],
}


@pytest.fixture(scope="module")
def rule_runs(tmp_path_factory):
    """`tradeoff search` through the CLI under each exit rule, on one small synthetic cache."""
    base = tmp_path_factory.mktemp("report_rules")
    cache_path = base / "cache.npz"
    write_cache(cache_path, synthetic_cache(num_samples=800, num_classes=5, exit_accuracies=(0.7, 0.85, 0.9), seed=5))
    codes = {}
    for name, options in RULES.items():
        codes[name] = main(["search", "--cache", str(cache_path), "--target-acc", "0.8", "--pop", "12", "--gens", "4",
                            "--no-progress", "--out", str(base / name), *options])
    return base, cache_path, codes


@pytest.mark.parametrize("name", list(RULES))
def test_search_under_every_rule_writes_a_report_that_rescores_its_fronts(rule_runs, name, capsys):
    from tradeoff.policy import rule_file
    from tradeoff.policy.scoring import score_thresholds
    from tradeoff.policy.table import exit_table
    from tradeoff.search.guarantee import split_val

    base, cache_path, codes = rule_runs
    run = base / name
    assert codes[name] == 0 and (run / "report.html").is_file()
    rule = rule_file.read_rule(run / "thresholds.json").rule
    K, M = 3, 3 if name in ("ensemble", "most-confident") else 2
    data = report_html.gather_report(run)
    assert data.num_exits == K and data.num_thresholds == M == rule.num_exits - (rule.fallback == "deepest")
    assert data.fallback == rule.fallback and data.confidence is not None
    assert len(data.chosen.thresholds) == M and data.chosen.per_class == (name == "per-class")
    summary = json.loads((run / "summary.json").read_text())
    assert {f.method for f in data.fronts} == {f["method"] for f in summary["fronts"]}
    if name == "per-class":
        assert "nsga-per-class" in {f.method for f in data.fronts}
    # each front re-scored independently with its saved thresholds, exactly as written (per class: the tables)
    cache = load_cache(cache_path)
    tables = {s: exit_table(cache.select(s).logits, cache.select(s).labels, cache.flops, confidence=rule.confidence,
                            fallback=rule.fallback, keep_predictions=True) for s in ("val", "test")}
    if name == "delta":
        tables["val"] = tables["val"].columns(split_val(tables["val"].num_samples,
                                                        seed=int(data_split_seed(run))).search)
    for doc in summary["fronts"]:
        front = next(f for f in data.fronts if f.method == doc["method"])
        t = np.array([[[2.0 if x is None else x for x in v] if isinstance(v, list) else 2.0 if v is None else v
                       for v in row] for row in doc["thresholds"]], dtype=np.float64)
        assert front.thresholds.shape == (len(doc["thresholds"]), M)
        assert front.per_class == (t.ndim == 3) == (doc["method"] == "nsga-per-class")
        if front.per_class:
            np.testing.assert_array_equal(front.class_thresholds, t)
            np.testing.assert_allclose(front.thresholds, np.median(t, axis=2))  # the synthetic tables have no off class
        val, test = score_thresholds(tables["val"], t), score_thresholds(tables["test"], t)
        np.testing.assert_allclose(val.accuracy, doc["val_accuracy"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(test.accuracy, doc["test_accuracy"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(front.val_fractions, val.exit_fractions, atol=1e-12)
        np.testing.assert_allclose(front.test_fractions, test.exit_fractions, atol=1e-12)
    # the figures carry M thresholds, the last exit's line under a thresholding fallback, and say who answers the rest
    fig = report_figures.pareto_figure(data)
    cols = report_figures.customdata_columns(K, M)
    assert np.asarray(fig.data[0].customdata).shape[1] == cols["width"]
    hover = fig.data[0].hovertemplate
    assert f"exit{M} ≥ %{{customdata[{M - 1}]" in hover and f"customdata[{M}]:" not in hover.split("<br>")[1]
    conf = report_figures.confidence_figure(data, data.chosen)
    assert len(conf.layout.shapes) == M
    last = conf.layout.annotations[conf.layout.meta["threshold_annotations"] + K - 1].text
    rest = {"ensemble": "the rest: ensemble of all exits", "most-confident": "the rest: most confident exit"}
    assert rest.get(name, "answers the rest") in last
    if name == "per-class":
        chosen = next(i for i, f in enumerate(fig.data) if f.name.startswith("chosen point") and "(val)" in f.name)
        assert "thresholds (median of per-class)" in fig.data[chosen].hovertemplate
    page = (run / "report.html").read_text()
    assert f'"M": {M}' in page
    # the static pictures redraw from the run's files
    capsys.readouterr()
    for png in ("pareto.png", "exits.png"):
        (run / png).unlink()
    assert main(["plot", str(run)]) == 0
    assert all((run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for png in ("pareto.png", "exits.png"))


def data_split_seed(run: Path) -> int:
    return json.loads((run / "thresholds.json").read_text())["guarantee"]["split"]["seed"]


@pytest.mark.parametrize("name", ["ensemble", "per-class"])
def test_exits_picture_labels_the_fallback_and_per_class_medians(rule_runs, name):
    from tradeoff.report import exits_plot, plots

    run = rule_runs[0] / name
    data = plots.exits_plot_data(run)
    labels = [exits_plot._rule_text(data, k) for k in range(3)]
    if name == "ensemble":
        assert data.fallback == "ensemble" and len(data.thresholds) == 3
        assert labels[2].startswith("conf >= ") and labels[2].endswith("+ the rest: ensemble of all exits")
    else:
        med = np.median(data.thresholds[0])
        assert labels[0] == f"conf >= {med:.3f}\n(median of per-class)" and labels[2] == "the rest"


@needs_chromium
def test_fallback_page_moves_the_last_exit_line_in_headless_chromium(rule_runs, tmp_path):
    run = rule_runs[0] / "ensemble"
    data = report_html.gather_report(run)
    front = data.fronts[0]
    i = front.size // 2
    cd = report_figures._customdata(data, front.thresholds[[i]], front.val_accuracy[[i]], front.test_accuracy[[i]],
                                    front.val_flops[[i]], front.test_flops[[i]], front.val_fractions[[i]],
                                    front.test_fractions[[i]])[0]
    browser = Browser(tmp_path)
    try:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=(run / "report.html").as_uri())
        browser.wait_event("Page.loadEventFired")
        # a click on a front point, as plotly reports it to the page's script
        browser.js("(() => { document.getElementById('tradeoff-pareto').emit('plotly_click', {points: [{customdata: "
                   f"{json.dumps([float(v) for v in cd])}, data: {{name: 'NSGA-II (val)'}}}}]}}); return 1; }})()")
        time.sleep(0.3)
        shapes = browser.js("document.getElementById('tradeoff-confidence').layout.shapes.map(s => s.x0)")
        assert shapes == pytest.approx(list(front.thresholds[i]), abs=1e-6)  # three lines: the last exit's too
        panel = browser.js("document.getElementById('tradeoff-point').textContent")
        assert f"exit3 ≥ {front.thresholds[i][2]:.4f}" in panel and "the rest: ensemble of all exits" in panel, panel
        a0 = browser.js("document.getElementById('tradeoff-confidence').layout.meta.threshold_annotations")
        last = browser.js(f"document.getElementById('tradeoff-confidence').layout.annotations[{a0 + 2}].text")
        assert last.startswith(f"≥ {front.thresholds[i][2]:.3f}") and "ensemble of all exits" in last, last
    finally:
        browser.close()
