"""Splitting any traceable `nn.Module` into sections at named modules, with torch.fx.

Real early exit must not recompute a network's prefix: exit k's head reads a feature the
sections before it already computed. So the network's forward graph (torch.fx) is cut
into consecutive sections; what flows from one section to the next is every value a
later part still needs (one tensor, or a tuple of them when a skip connection crosses
the cut). The sections share the network's own modules and parameters.

Cut points are given as graph nodes (`tap_node`: the call of a named module); the parts
of `split_graph` are plain `fx.GraphModule`s.
"""

from __future__ import annotations

import difflib
import operator

from torch import fx, nn

__all__ = ["Pick", "find_module", "split_graph", "trace", "tap_node"]


class Pick(nn.Module):
    """The value at `index` of the state a section passes on (the state itself when None)."""

    def __init__(self, index: int | None):
        super().__init__()
        self.index = index

    def forward(self, state):
        return state if self.index is None else state[self.index]


def find_module(model: nn.Module, name: str, *, what: str = "tap") -> nn.Module:
    """The submodule called `name`, or a ValueError listing the nearest names (difflib)."""
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    names = [n for n in modules if n]
    near = difflib.get_close_matches(name, names, n=5, cutoff=0.5) or names[:5]
    raise ValueError(
        f"{what} {name!r} is not a module of {type(model).__name__}; nearest names: {', '.join(near) or 'none'} "
        "(all names: [n for n, _ in model.named_modules()])"
    )


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping the named modules whole (one call node each)."""

    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname.startswith("<unregistered>"):
            return False
        return qualname in self.leaves or super().is_leaf_module(m, qualname)

    def path_of_module(self, mod: nn.Module) -> str:
        """Wrappers kept out of the module tree (our PlainResNet's stem) are traced through."""
        try:
            return super().path_of_module(mod)
        except NameError:
            return f"<unregistered>{type(mod).__name__}"


def trace(model: nn.Module, leaves: list[str], *, what: str = "model") -> fx.GraphModule:
    """`model`'s forward as an fx graph, each module named in `leaves` kept as one call.

    Raises:
        ValueError: torch.fx cannot trace it (data-dependent control flow, an untraceable
            op...), naming the error.
    """
    for name in leaves:
        find_module(model, name)
    try:
        graph = _Tracer(set(leaves)).trace(model)
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, RuntimeError...)
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ValueError(
            f"cannot split {what} {type(model).__name__} with torch.fx: {detail}; make its forward traceable "
            "(no Python control flow on tensor values) or give it stages() yourself"
        ) from None
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"{what} {type(model).__name__}.forward takes {len(placeholders)} inputs; expected one (x)")
    return fx.GraphModule(model, graph)


def tap_node(gm: fx.GraphModule, name: str) -> fx.Node:
    """The one call of module `name` in the graph."""
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == name]
    if not calls:
        raise ValueError(f"module {name!r} is never called by forward(); choose a module the forward pass runs")
    if len(calls) > 1:
        raise ValueError(f"module {name!r} is called {len(calls)} times by forward(); choose a module called once")
    return calls[0]


def split_graph(gm: fx.GraphModule, exits: list[fx.Node], heads: dict[int, fx.Node] | None = None):
    """Cut the graph after each exit's input node.

    Args:
        gm: the traced network.
        exits: K nodes in forward order; exit k reads the value of exits[k].
        heads: exit k -> the graph's own head call (e.g. the classifier) applied to exits[k];
            those calls are left out of the sections.

    Returns:
        (sections, picks, heads): K section GraphModules, K `Pick`s that take exit k's
        input out of section k's output, and K head GraphModules or None (graph heads).

    Raises:
        ValueError: exits out of order, or a head's output that feeds further computation.
    """
    heads = heads or {}
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    head_nodes = set(heads.values())
    cuts = [pos[n] for n in exits]
    if cuts != sorted(cuts) or len(set(cuts)) != len(cuts):
        raise ValueError("the exits must be given in the order forward() reaches them, shallow -> deep, each once")
    for node in nodes:
        used = [a for a in node.all_input_nodes if a in head_nodes]
        if used and node.op != "output":
            raise ValueError(f"the output of {used[0].target!r} feeds {node.target!s} inside forward(); an exit's "
                             "logits must not be used further by the network")
    body = [n for n in nodes if n.op not in ("output", "get_attr") and n not in head_nodes]
    sections, picks, head_modules = [], [], []
    carried: list[fx.Node] = [n for n in body if n.op == "placeholder"]
    start = 0
    for k, cut in enumerate(cuts):
        part = [n for n in body if start <= pos[n] <= cut and n.op != "placeholder"]
        later = {u for n in body if pos[n] > cut for u in n.all_input_nodes}
        later |= {u for j, h in heads.items() if j > k for u in h.all_input_nodes}
        later |= {exits[j] for j in range(k + 1, len(exits))}
        defined = carried + part
        live = [n for n in defined if n in later or n is exits[k]]
        sections.append(_section(gm, part, carried, live))
        picks.append(Pick(None if len(live) == 1 else live.index(exits[k])))
        head_modules.append(_head(gm, heads[k]) if k in heads else None)
        carried, start = live, cut + 1
    return sections, picks, head_modules


def _copy(graph: fx.Graph, env: dict, node: fx.Node) -> fx.Node:
    def lookup(n: fx.Node) -> fx.Node:
        if n not in env and n.op == "get_attr":
            env[n] = graph.node_copy(n)
        return env[n]

    return graph.node_copy(node, lookup)


def _section(gm: fx.GraphModule, part: list[fx.Node], inputs: list[fx.Node], outputs: list[fx.Node]) -> fx.GraphModule:
    graph = fx.Graph()
    state = graph.placeholder("state")
    env: dict = {}
    if len(inputs) == 1:
        env[inputs[0]] = state
    else:
        for i, n in enumerate(inputs):
            env[n] = graph.call_function(operator.getitem, (state, i))
    for node in part:
        env[node] = _copy(graph, env, node)
    graph.output(env[outputs[0]] if len(outputs) == 1 else tuple(env[n] for n in outputs))
    return fx.GraphModule(gm, graph)


def _head(gm: fx.GraphModule, node: fx.Node) -> fx.GraphModule:
    """The graph's own head call on its one input (e.g. `fc(x)`), as a module."""
    graph = fx.Graph()
    x = graph.placeholder("x")
    inputs = node.all_input_nodes
    if len([n for n in inputs if n.op != "get_attr"]) != 1:
        raise ValueError(f"head {node.target!r} takes {len(inputs)} inputs; an exit head must take one feature")
    env = {inputs[0]: x}
    graph.output(_copy(graph, env, node))
    return fx.GraphModule(gm, graph)
