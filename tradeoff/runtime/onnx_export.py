"""ONNX export of a multi-exit network with its exit rule inside, run by ONNX Runtime.

The early-exit graph (`export_early_exit`) holds the sections, the heads and the exit
rule (confidence measure, per-exit or per-class thresholds, switched-off exits,
temperatures, the `ensemble` answer and the fallback), with ONNX control flow so that a
sample that leaves at exit k never runs section k+1:

- Each thresholded exit is an ONNX `If`: the `then` branch returns the exit's answer,
  the `else` branch holds the rest of the network (nested `If`s down to the deepest exit).
- A batch is a per-sample loop (an ONNX `Scan` over axis 0): each sample takes its own
  path, and its answer does not depend on its batch-mates. Batch N costs about N times
  batch 1 (no batching inside a section); the alternative, a shrinking batch, needs
  data-dependent shapes in both branches of every `If`, which the exporter cannot trace.

Graph contract: input `input` float32 (N, C, H, W), N >= 1; outputs `label` int64 (N,),
`exit` int64 (N,) (0-based exit whose section the sample stopped after; K-1 for a
sample the fallback answered) and `confidence` float32 (N,) (the confidence measure of
the answer given). `metadata_props` record the rule, the thresholds and the checkpoint's
sha256 (`tradeoff.*` keys).

Exporter: torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`): it turns
`torch.cond` into `If` and `torch._higher_order_ops.scan` into `Scan`, so the rule is
written once as torch code and traced, and batch norms are folded by its optimiser. The
TorchScript exporter cannot: it traces one path of Python `if`s, and scripting the
models' Python is not supported for every family.

Decisions are made in float64 on the head's logits, as `policy.exit_outputs` does for
the cache; a folded batch norm changes logits in the last float32 bits, so a confidence
within ~1e-6 of a threshold may fall on the other side than in the (eager) cache.
`tradeoff.policy.table.rule_decisions` is the NumPy statement of the same rule on cached
logits, the reference the graph is checked against.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from tradeoff.errors import first_line
from tradeoff.policy.confidence import SOFTMAX_MEASURES
from tradeoff.policy.rule import OFF_THRESHOLD, ExitRule

# The dynamo exporter writes opset 18 and newer; older opsets go through the ONNX version
# converter, which does not convert the If/Scan subgraphs the exit rule needs.
MIN_OPSET = 18
OUTPUT_NAMES = ("label", "exit", "confidence")


def _graph_thresholds(rule: ExitRule) -> tuple:
    """The rule's entries as the graph branches on them, shallow -> deep: None (off: nobody
    leaves there, and its head is skipped when nothing else needs it), a float, or (per
    class) C floats with a class switched off as `OFF_THRESHOLD` (no confidence reaches it)."""
    def entry(t):
        if not isinstance(t, tuple):
            return t
        if all(v is None for v in t):
            return None
        return tuple(OFF_THRESHOLD if v is None else float(v) for v in t)

    return tuple(entry(t) for t in rule.thresholds)


def _rule_json(rule: ExitRule) -> dict:
    """The rule as recorded in the graph's `tradeoff.rule` metadata."""
    return {"thresholds": list(_graph_thresholds(rule)), "confidence": rule.confidence, "fallback": rule.fallback,
            "ensemble": rule.ensemble, "temperatures": rule.temperatures}


# --------------------------------------------------------------------------- the rule, torch
class EarlyExitGraph(nn.Module):
    """The exit rule as traceable torch code: `torch.cond` per exit, a scan over samples.

    forward(x (N, ...)) -> (label int64 (N,), exit int64 (N,), confidence float32 (N,)).
    """

    def __init__(self, stages: list, rule: ExitRule):
        super().__init__()
        self.sections = nn.ModuleList([stage[0] for stage in stages])
        self.heads = nn.ModuleList([stage[1] for stage in stages])
        self.rule = rule
        self.thresholds = _graph_thresholds(rule)
        self.num_exits = len(stages)
        # Every exit's logits are needed by the ensemble answer and by both fallbacks.
        self.keep_all = rule.ensemble or rule.fallback != "deepest"
        for k, t in enumerate(self.thresholds):
            if isinstance(t, tuple):
                self.register_buffer(f"per_class_{k}", torch.tensor(t, dtype=torch.float64), persistent=False)

    def forward(self, x: torch.Tensor):
        from torch._higher_order_ops.scan import scan  # ONNX Scan; no public alias in torch 2.13

        def one(carry, sample):
            return carry.clone(), self._from(0, sample.unsqueeze(0), None)

        _, (label, exit_, conf) = scan(one, torch.zeros(1), x)
        return label, exit_, conf

    def _outputs(self, hist: torch.Tensor):
        """Confidence and answer (0-d) of the newest exit in `hist` (k, C) tempered logits."""
        if self.rule.ensemble:
            probs = torch.softmax(hist, dim=-1).sum(dim=0) / hist.shape[0]
        else:
            probs = torch.softmax(hist[-1], dim=-1)
        return self._confidence(probs), probs.argmax()

    def _confidence(self, probs: torch.Tensor) -> torch.Tensor:
        measure = self.rule.confidence
        if measure == "maxprob":
            return probs.max()
        if measure == "margin":
            top = torch.topk(probs, 2).values
            return torch.clamp(top[0] - top[1], 0.0, 1.0)
        plogp = torch.where(probs > 0, probs * torch.log(probs), torch.zeros_like(probs))
        return torch.clamp(1.0 + plogp.sum() / math.log(probs.shape[-1]), 0.0, 1.0)

    def _from(self, k: int, x: torch.Tensor, hist):
        """Run section k on one sample (1, ...) and decide; deeper exits only if it stays."""
        x = self.sections[k](x)
        t, last = self._threshold(k), k == self.num_exits - 1
        if t is None and not last and not self.keep_all:
            return self._from(k + 1, x, hist)  # switched off, and nothing needs its head
        z = self.heads[k](x)[0].to(torch.float64)
        temperature = 1.0 if self.rule.temperatures is None else self.rule.temperatures[k]
        if temperature != 1.0:
            z = z / temperature
        hist = z[None] if hist is None or not self.keep_all else torch.cat([hist, z[None]])
        conf, pred = self._outputs(hist)
        if last:
            return self._final(hist, conf, pred, t)
        if t is None:
            return self._from(k + 1, x, hist)
        limit = self._limit(k, pred)

        def leave(x, hist, conf, pred):
            return pred.clone(), torch.full_like(pred, k), conf.to(torch.float32)

        def stay(x, hist, conf, pred):
            return self._from(k + 1, x, hist)

        return torch.cond(conf >= limit, leave, stay, (x, hist, conf, pred))

    def _threshold(self, k: int):
        """Exit k's threshold entry, None for the deepest exit under `deepest`."""
        return self.thresholds[k] if k < len(self.thresholds) else None

    def _limit(self, k: int, pred: torch.Tensor):
        """Exit k's threshold for a sample answered `pred` (a float, or a per-class lookup)."""
        t = self._threshold(k)
        if not isinstance(t, tuple):
            return t
        return getattr(self, f"per_class_{k}").index_select(0, pred.reshape(1))[0]

    def _final(self, hist, conf, pred, t):
        """The deepest exit's answer, or the fallback's when its threshold is not met."""
        K = self.num_exits
        exit_ = torch.full_like(pred, K - 1)
        if self.rule.fallback == "deepest":
            return pred, exit_, conf.to(torch.float32)
        if self.rule.fallback == "ensemble":
            probs = torch.softmax(hist.mean(dim=0), dim=-1)
            other_conf, other = self._confidence(probs), probs.argmax()
        else:  # most-confident: every exit's (confidence, answer), the first of the most confident
            pairs = [self._outputs(hist[: j + 1]) for j in range(K)]
            confs = torch.stack([c for c, _ in pairs])
            best = confs.argmax().reshape(1)  # index_select: a traced index, not a Python int
            other_conf = confs.index_select(0, best)[0]
            other = torch.stack([p for _, p in pairs]).index_select(0, best)[0]
        if t is None:
            sure = torch.zeros((), dtype=torch.bool)
        else:
            sure = conf >= self._limit(K - 1, pred)
        return torch.where(sure, pred, other), exit_, torch.where(sure, conf, other_conf).to(torch.float32)


class OriginalNetwork(nn.Module):
    """The single-exit network: sections 1..K and head K. forward -> (label (N,), logits (N, C))."""

    def __init__(self, stages: list):
        super().__init__()
        self.sections = nn.ModuleList([stage[0] for stage in stages])
        self.head = stages[-1][1]

    def forward(self, x: torch.Tensor):
        for section in self.sections:
            x = section(x)
        logits = self.head(x)
        return logits.argmax(dim=-1), logits


# --------------------------------------------------------------------------- export
def export_early_exit(model: nn.Module, rule: ExitRule, *, example_input: torch.Tensor,
                      out_path: str | os.PathLike, opset: int | None = None, metadata: dict | None = None) -> Path:
    """Write one ONNX file holding the sections, heads and exit rule of `model`.

    Source of the rule: the per-exit max-softmax rule of BranchyNet/SCAN; SCAN's ensemble
    fallback (Zhang et al., NeurIPS 2019, official code: argmax of the mean of all exits'
    logits); SDN's most-confident fallback (Kaya et al., ICML 2019). See DESIGN.md "Exit rule".

    Args:
        model: a multi-exit network with `stages()` (K (section, head) pairs).
        rule: the `ExitRule` the graph runs (thresholds, off exits, per class, confidence
            measure maxprob / margin / entropy, temperatures, ensemble, fallback); checked
            against the model's K exits and C classes.
        example_input: (n, C, H, W) float32 sample(s) of the model's input; only its
            per-sample shape matters (the graph takes any batch size N >= 1).
        out_path: the .onnx file, written atomically (nothing is left on failure).
        opset: ONNX opset (default: the exporter's, >= MIN_OPSET).
        metadata: extra string entries for `metadata_props` (e.g. checkpoint_sha256).

    Returns:
        out_path as a Path.

    Raises:
        TypeError: `rule` is not an ExitRule.
        ValueError: a rule that does not fit the model (`ExitRule.check_fits`), confidence
            "patience" (not in the graph), a model without stages, an opset too old for
            If/Scan, or a stage that cannot be traced (naming the stage and the op).
    """
    if not isinstance(rule, ExitRule):
        raise TypeError(f"rule must be a tradeoff.ExitRule (read_rule(path).rule); got {type(rule).__name__}")
    if rule.confidence not in SOFTMAX_MEASURES:
        raise ValueError(f"confidence {rule.confidence!r} cannot be exported: the ONNX graph computes "
                         f"{', '.join(SOFTMAX_MEASURES)} - search thresholds for one of those")
    from tradeoff.runtime.early_exit import model_stages

    stages = model_stages(model)
    example = _check_example(example_input)
    with torch.no_grad():
        num_classes = int(_probe_classes(stages, example))
    rule.check_fits(len(stages), num_classes)
    meta = {"graph": "early-exit", "rule": json.dumps(_rule_json(rule)), "thresholds": json.dumps(list(_graph_thresholds(rule))),
            "num_exits": str(len(stages)), "num_classes": str(num_classes), "batch": "per-sample ONNX Scan"}
    return _export(EarlyExitGraph(stages, rule), stages, example, out_path, opset, {**meta, **(metadata or {})},
                   OUTPUT_NAMES)


def export_original(model: nn.Module, *, example_input: torch.Tensor, out_path: str | os.PathLike,
                    opset: int | None = None, metadata: dict | None = None) -> Path:
    """Write the original single-exit network (sections 1..K, head K) as ONNX, for timing.

    Outputs `label` int64 (N,) and `logits` float32 (N, C); batch N dynamic. Same
    errors as `export_early_exit`.
    """
    from tradeoff.runtime.early_exit import model_stages

    stages = model_stages(model)
    example = _check_example(example_input)
    return _export(OriginalNetwork(stages), stages, example, out_path, opset,
                   {"graph": "original", **(metadata or {})}, ("label", "logits"))


def _check_example(example_input) -> torch.Tensor:
    if not isinstance(example_input, torch.Tensor) or example_input.dtype != torch.float32 or example_input.ndim < 2:
        raise TypeError(
            "example_input must be a float32 torch tensor of shape (n, C, H, W); got "
            f"{type(example_input).__name__} {getattr(example_input, 'dtype', '')} {tuple(getattr(example_input, 'shape', ()))}"
        )
    if example_input.shape[0] < 1:
        raise ValueError("example_input must hold at least one sample; got an empty batch")
    # Two samples: torch.export specialises a batch dimension of size 1, and N must stay dynamic.
    return example_input[:1].expand(2, *example_input.shape[1:]).contiguous()


def _probe_classes(stages: list, example: torch.Tensor) -> int:
    x = example[:1]
    for section, _ in stages:
        x = section(x)
    return stages[-1][1](x).shape[-1]


def _check_opset(opset: int | None) -> int | None:
    import onnx

    if opset is None:
        return None
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(
            f"--opset {opset} is too old for the early-exit graph's control flow: it needs opset >= {MIN_OPSET} "
            f"(ONNX If and Scan as the torch exporter writes them); pass --opset {MIN_OPSET} or newer"
        )
    if opset > newest:
        raise ValueError(f"--opset {opset} is newer than this onnx package knows ({newest}); pass --opset {newest} or older")
    return opset


def _export(module: nn.Module, stages: list, example: torch.Tensor, out_path, opset, metadata: dict,
            output_names) -> Path:
    """Trace `module`, record `metadata`, check the model, write it atomically."""
    import onnx

    from tradeoff.fileio import write_bytes_atomic

    opset = _check_opset(opset)
    out_path = Path(out_path)
    _check_writable(out_path)
    module = module.eval()
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset, input_names=["input"],
                                        output_names=list(output_names), dynamic_shapes=({0: batch},), optimize=True)
            proto = program.model_proto
    except Exception as exc:  # noqa: BLE001 - any tracing failure is reported as the stage that caused it
        raise ValueError(_diagnose(stages, example, exc)) from None
    del proto.metadata_props[:]
    for key, value in sorted({"producer": "tradeoff", **metadata}.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"tradeoff.{key}", str(value)
    data = proto.SerializeToString()
    onnx.checker.check_model(data if len(data) < 2**31 else proto, full_check=False)
    write_bytes_atomic(out_path, data)
    return out_path


def _check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"--out {path} is a directory; give a file path such as {path / 'model.onnx'}")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise PermissionError(f"--out {path}: cannot write in {parent}/ (permission denied); choose another --out")


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress to stdout and logs warnings (e.g. torchvision missing)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # torch's loggers hold their own stderr handles
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


_OP = re.compile(r"\b(aten[.:]{1,2}[A-Za-z_0-9]+(?:\.[A-Za-z_0-9]+)?|numpy\.[A-Za-z_0-9.]+)")


def _diagnose(stages: list, example: torch.Tensor, exc: BaseException) -> str:
    """One line naming the first stage that cannot be exported on its own, and its op."""
    x = example
    for k, (section, head) in enumerate(stages):
        for part, name in ((section, "section"), (head, "head")):
            try:
                with _quiet(), torch.no_grad():
                    torch.onnx.export(part.eval(), (x,), dynamo=True, optimize=False)
            except Exception as part_exc:  # noqa: BLE001
                text = str(part_exc)
                ops = _OP.findall(text)
                op = ops[0] if ops else ("a data-dependent Python branch (float(), .item() or `if` on a tensor)"
                                         if "data-dependent" in text else "an op the exporter does not support")
                cause = _cause_line(part_exc)
                return (f"cannot export stage {k + 1} {name} ({type(part).__name__}) to ONNX: {op} - {cause}; "
                        "make that module traceable by torch.export (no data-dependent Python, no NumPy calls)")
            if name == "section":
                with torch.no_grad():
                    x = section(x)
    return f"cannot export the early-exit graph to ONNX: {_cause_line(exc)}"


def _cause_line(exc: BaseException) -> str:
    """The most telling line of a (long, multi-part) exporter error."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line.startswith("<class") or "Error" in line.split(":")[0]:
            return line[:240]
    return first_line(exc, 240)
