"""Griffe extension: read a Google-style ``Example:`` section as ``Examples:`` so doctests render as code."""

import re

import griffe

_EXAMPLE_HEADER = re.compile(r"^(\s*)Example:\s*$", flags=re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section headers to ``Examples:`` before docstrings are parsed.

    Griffe treats ``Examples:`` as a doctest section (rendered as code) but ``Example:`` as a
    plain admonition (rendered as Markdown, where ``>>>`` becomes nested quotes).
    """

    def on_instance(self, *, obj: griffe.Object, **kwargs: object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE_HEADER.sub(r"\1Examples:", obj.docstring.value)
