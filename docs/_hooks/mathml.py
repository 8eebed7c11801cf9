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


def to_mathml(tex: str, *, display: bool) -> str:
    """Return the MathML element for one TeX formula, in the wrapper arithmatex gave it."""
    try:
        mathml = convert(tex.strip(), display="block" if display else "inline")
    except Exception as error:  # latex2mathml raises several exception types for unsupported input
        raise ValueError(f"cannot convert {tex.strip()!r} to MathML: {error}") from error
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
