"""Checks shared by the tests of the scripts in ``examples/``: honest docstrings and readable figures."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# A measured result quoted as ``name=number`` (``accuracy=0.9917``), as opposed to ``name=...``.
_QUOTED_NUMBER = re.compile(r"\b[A-Za-z_]\w*=-?\d+(?:\.\d+)?(?:e-?\d+)?\b")


def docstring(script: str) -> str:
    """Return the module docstring of ``examples/<script>``."""
    text = ast.get_docstring(ast.parse((EXAMPLES / script).read_text()))
    assert text, f"{script} has no module docstring"
    return text


def quoted_output(script: str) -> list[str]:
    """Return the docstring's literal lines that show printed output (indented, with ``name=`` fields)."""
    return [line.strip() for line in docstring(script).splitlines() if line.startswith("    ") and "=" in line]


def quoted_numbers(script: str) -> list[str]:
    """Return the ``name=number`` results the docstring quotes."""
    return [match.group(0) for line in quoted_output(script) for match in _QUOTED_NUMBER.finditer(line)]


def unprinted_quotes(script: str, printed: str) -> list[str]:
    """Return the docstring's output lines that no printed line matches (values and ``...`` are wildcards)."""
    printed_lines = printed.splitlines()
    missing = []
    for line in quoted_output(script):
        tokens = re.split(r"(=\S+|\.\.\.)", line)
        pattern = "".join(
            r"=\S+" if token.startswith("=") else ".*" if token == "..." else re.escape(token) for token in tokens
        )
        if not any(re.fullmatch(pattern, printed_line.strip()) for printed_line in printed_lines):
            missing.append(line)
    return missing


def figure_problems(fig: Figure) -> list[str]:
    """Return what makes ``fig`` hard to read: an unlabelled axis, no title, a legend over data."""
    canvas = FigureCanvasAgg(fig)  # also works once pyplot has closed the figure
    canvas.draw()
    renderer = canvas.get_renderer()
    problems = []
    has_suptitle = bool(fig.get_suptitle())
    for index, ax in enumerate(fig.axes):
        name = ax.get_title() or f"axes {index}"
        if not ax.get_xlabel():
            problems.append(f"{name}: no x-axis label")
        if not ax.get_ylabel():
            problems.append(f"{name}: no y-axis label")
        if not (ax.get_title() or has_suptitle):
            problems.append(f"{name}: no title")
        for legend in [ax.get_legend(), *fig.legends]:
            if legend is not None:
                covered = _data_under(ax, legend.get_window_extent(renderer))
                problems.extend(f"{name}: the legend covers {what}" for what in covered)
    return problems


def _data_under(ax, box: Bbox) -> list[str]:
    """Name the data artists of ``ax`` that have a point, a bar or an area inside ``box`` (display units)."""
    covered = []
    for line in ax.lines:
        points = ax.transData.transform(line.get_xydata())
        if any(box.contains(x, y) for x, y in points):
            covered.append(f"line {line.get_label()!r}")
    for collection in ax.collections:
        if isinstance(collection, PathCollection):  # a scatter plot: one marker per point
            points = collection.get_offset_transform().transform(collection.get_offsets())
            if any(box.contains(x, y) for x, y in points):
                covered.append(f"points {collection.get_label()!r}")
            continue
        transform = collection.get_transform()
        if any(path.transformed(transform).intersects_bbox(box, filled=True) for path in collection.get_paths()):
            covered.append(f"area {collection.get_label()!r}")
    for patch in ax.patches:
        if patch.get_window_extent().overlaps(box):
            covered.append(f"bar {patch.get_label()!r}")
    return covered
