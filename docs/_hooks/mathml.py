"""MkDocs hook: turn the TeX that ``pymdownx.arithmatex`` marks into MathML when the site is built.

Browsers render MathML natively, so formulas need no script, no font download and no network.
"""

from __future__ import annotations

import html
import re
from typing import Any

from latex2mathml.converter import convert
from mkdocs.exceptions import PluginError

_ARITHMATEX = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">(?P<open>\\\(|\\\[)(?P<tex>.*?)(?:\\\)|\\\])</(?P=tag)>',
    flags=re.DOTALL,
)
# TeX sets a thin space between an operator name and an ordinary argument: \log p, \exp x, \max_i a.
_OPERATOR_THEN_ARGUMENT = re.compile(
    r"(<mi>(?:log|exp|max|min|sup|inf|sin|cos|tanh|det|arg)</mi>)(?=<mi|<mn|<mrow|<msub|<msup)"
)
# latex2mathml passes a command it does not know through as text, such as <mi>\foo</mi>, and keeps the
# "&" and "\\" of an environment it cannot lay out as a table: browsers would show the "&" and
# ignore the line break.
_UNCONVERTED = re.compile(r">[^<]*\\[A-Za-z]+[^<]*<|<mi>&</mi>|linebreak=\"newline\"")
# latex2mathml lays out split (an mtable aligned right, then left) but not amsmath's aligned, the same layout.
_ALIGNED = re.compile(r"\\(begin|end)\{aligned\}")


def to_mathml(tex: str, *, display: bool) -> str:
    """Return one TeX formula as MathML, in the wrapper arithmatex gave it.

    Raises:
        ValueError: If latex2mathml fails or leaves a TeX command unconverted.
    """
    source = tex.strip()
    try:
        mathml = convert(_ALIGNED.sub(r"\\\1{split}", source), display="block" if display else "inline")
    except Exception as error:  # latex2mathml raises several exception types for malformed input
        raise ValueError(f"cannot convert {source!r} to MathML: {error}") from error
    if leftover := _UNCONVERTED.search(mathml):
        raise ValueError(f"cannot convert {source!r} to MathML: {leftover.group(0).strip('<>')!r} is not supported")
    mathml = _OPERATOR_THEN_ARGUMENT.sub(r'\1<mspace width="0.1667em"></mspace>', mathml)
    return f'<div class="arithmatex">{mathml}</div>' if display else f'<span class="arithmatex">{mathml}</span>'


def render_math(page_html: str) -> str:
    """Replace every arithmatex span and div in ``page_html`` by its MathML."""

    def replace(match: re.Match[str]) -> str:
        return to_mathml(html.unescape(match.group("tex")), display=match.group("open") == "\\[")

    return _ARITHMATEX.sub(replace, page_html)


def on_page_content(html_text: str, page: Any, **kwargs: Any) -> str:
    """MkDocs event: convert the formulas of one page (guides and API pages alike)."""
    try:
        return render_math(html_text)
    except ValueError as error:
        raise PluginError(f"{page.file.src_path}: {error}") from error
