"""The package's import graph: layers without cycles, and no module past ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "torchbayesian"

# Lower layers never import higher ones; modules of one layer may import each other without cycles.
LAYERS = [
    {"_math", "_kl_dispatch", "_sampling", "_selection", "_validation", "_native", "_native.ops", "_native.convolution",
     "calibration", "uncertainty", "distributed"},
    {"priors", "priors.base", "priors.distribution", "priors.gaussian", "priors.laplace", "priors.scale_mixture"},
    {"posteriors", "posteriors.base", "posteriors.gaussian", "posteriors.scale_mixture"},
    {"registration"},
    {"estimators", "estimators.base", "estimators.flipout", "estimators.lrt", "estimators.registry",
     "estimators.layer_op", "estimators.layers", "estimators._transformers"},
    {"kl"},
    {"mixin", "module", "checkpoints", "predict", "losses", "generation"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("torchbayesian"):
                target = node.module.removeprefix("torchbayesian").removeprefix(".")
                for alias in node.names:
                    candidate = f"{target}.{alias.name}" if target else alias.name
                    found.add(candidate if (PACKAGE / Path(*candidate.split("."))).with_suffix(".py").exists()
                              or (PACKAGE / Path(*candidate.split("."))).is_dir() else target)
        graph[name] = found - {""}
    return graph


def _layer(name: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        if name in layer:
            return index
    return None


def test_lower_layers_never_import_higher_ones() -> None:
    graph = _imports()
    violations = []
    for module, targets in graph.items():
        level = _layer(module)
        if level is None:
            continue
        for target in targets:
            target_level = _layer(target)
            if target_level is None or target_level > level:
                violations.append(f"{module} (layer {level}) imports {target} (layer {target_level})")
    assert not violations, "\n".join(sorted(violations))


def test_the_import_graph_has_no_cycle() -> None:
    graph = _imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if target not in graph or target == "bnn" and node == "":
                continue
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_no_module_is_longer_than_about_400_lines() -> None:
    long = {path.name: n for path in PACKAGE.rglob("*.py") if (n := len(path.read_text().splitlines())) > 420}
    assert not long, long
