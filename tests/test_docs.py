"""Run every Python block of the guides and the README, and build the site with ``mkdocs build --strict``.

Blocks of one page run in order in one namespace, like a notebook. A block that must not run
(a multi-process launch, say) is preceded by a line ``<!-- skip: reason -->``.
"""

import ast
import importlib.util
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

import torchbayesian
from torchbayesian import bnn

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

_BLOCK = re.compile(
    r"^(?:<!-- skip: (?P<reason>[^>]*?) -->\n)?```python[^\n]*\n(?P<code>.*?)^```[ \t]*$",
    flags=re.MULTILINE | re.DOTALL,
)
_DIRECTIVE = re.compile(r"^::: (?P<module>[\w.]+)[ \t]*$", flags=re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """Return ``(first_line, code, skip_reason)`` for each fenced Python block at the start of a line."""
    blocks = []
    for match in _BLOCK.finditer(text):
        first_line = text.count("\n", 0, match.start("code")) + 1
        blocks.append((first_line, match.group("code"), match.group("reason")))
    return blocks


def test_python_blocks_are_found() -> None:
    text = (
        "intro\n```python\na = 1\n```\n<!-- skip: needs two processes -->\n```python\nlaunch()\n```\n"
        '```python title="x.py"\nb = a + 1\n```\n```bash\nls\n```\n'
    )
    assert python_blocks(text) == [
        (3, "a = 1\n", None),
        (7, "launch()\n", "needs two processes"),
        (10, "b = a + 1\n", None),
    ]


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
@pytest.mark.usefixtures("one_thread")
def test_page_code_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = page.read_text()
    blocks = python_blocks(text)
    assert len(blocks) == len(re.findall(r"^```python", text, flags=re.MULTILINE)), (
        f"{page.name}: a ```python fence is not at the start of a line or is not closed; it would not be tested."
    )
    for line, _, reason in blocks:
        assert reason is None or reason.strip(), f"{page.name}:{line}: a skipped block must say why."
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for line, code, reason in blocks:
        if reason is None:
            exec(compile("\n" * (line - 1) + code, str(page), "exec"), namespace)  # noqa: S102


def test_site_builds_strictly(site: Path) -> None:
    for page in ("index.html", "quickstart/index.html", "concepts/index.html", "api/module/index.html"):
        assert (site / page).is_file(), page
    assert "BayesianModule(" in _text(site / "api" / "module" / "index.html")


def _text(page: Path) -> str:
    return re.sub(r"<[^>]+>", "", page.read_text())


def _inventory(site: Path) -> dict[str, str]:
    """Map each object documented with its own entry (priority 1) in ``objects.inv`` to its page."""
    header, _, body = (site / "objects.inv").read_bytes().partition(b"zlib.\n")
    assert header.startswith(b"# Sphinx inventory version 2"), header[:40]
    entries = {}
    for line in zlib.decompress(body).decode().splitlines():
        name, _, priority, uri, _ = line.split(" ", 4)
        if priority == "1":
            entries[name] = uri
    return entries


def _defining_path(obj: object) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def test_every_public_name_has_a_reference_entry(site: Path) -> None:
    documented = _inventory(site)
    missing = [name for name in bnn.__all__ if _defining_path(getattr(bnn, name)) not in documented]
    assert not missing, (
        f"bnn names missing from the API reference: {missing}; add a docs/api page containing "
        "`::: <defining module>` and list it in mkdocs.yml."
    )


def test_api_overview_lists_every_public_name() -> None:
    overview = (DOCS / "api" / "index.md").read_text()
    missing = [name for name in bnn.__all__ if f"`bnn.{name}`" not in overview]
    assert not missing, f"docs/api/index.md does not list {missing}."


def _defines_public_names(source: Path) -> bool:
    """Whether the module lists in ``__all__`` a name it defines itself (read statically: no import needed)."""
    tree = ast.parse(source.read_text())
    exported: set[str] = set()
    defined: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {target.id for target in targets if isinstance(target, ast.Name)}
            if "__all__" in names and node.value is not None:
                exported = set(ast.literal_eval(node.value))
            defined |= names
    return any(not name.startswith("__") for name in exported & defined)


def _modules_needing_a_page() -> set[str]:
    needed = {getattr(bnn, name).__module__ for name in bnn.__all__}
    package = Path(torchbayesian.__file__).parent
    for source in package.rglob("*.py"):
        name = ".".join(("torchbayesian", *source.relative_to(package).with_suffix("").parts))
        name = name.removesuffix(".__init__")
        if any(part.startswith("_") for part in name.split(".")) or name == "torchbayesian.bnn":
            continue
        if _defines_public_names(source):
            needed.add(name)
    return needed


def test_each_module_has_one_reference_page() -> None:
    pages: dict[str, list[str]] = {}
    for page in sorted((DOCS / "api").rglob("*.md")):
        directives = _DIRECTIVE.findall(page.read_text())
        assert len(directives) <= 1, f"{page.relative_to(DOCS)} documents several modules: {directives}"
        for module in directives:
            pages.setdefault(module, []).append(str(page.relative_to(DOCS)))
    missing = sorted(_modules_needing_a_page() - set(pages))
    assert not missing, f"modules without a docs/api page (one `::: module` directive each): {missing}"
    duplicated = {module: found for module, found in pages.items() if len(found) > 1}
    assert not duplicated, f"modules documented on several pages: {duplicated}"
    navigation = (ROOT / "mkdocs.yml").read_text()
    unlisted = [found[0] for found in pages.values() if found[0] not in navigation]
    assert not unlisted, f"API pages missing from the nav of mkdocs.yml: {unlisted}"


def _mathml_hook():
    spec = importlib.util.spec_from_file_location("docs_mathml_hook", DOCS / "_hooks" / "mathml.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_formulas_become_mathml_when_the_site_is_built() -> None:
    hook = _mathml_hook()
    page = (
        '<p>weight <span class="arithmatex">\\(1/N\\)</span></p>\n'
        '<div class="arithmatex">\\[\n\\frac{a}{b} &lt; \\log p\n\\]</div>'
    )
    rendered = hook.render_math(page)
    assert "\\(" not in rendered and "\\[" not in rendered and "\\frac" not in rendered
    assert rendered.count('<math xmlns="http://www.w3.org/1998/Math/MathML"') == 2
    assert '<span class="arithmatex"><math' in rendered and 'display="inline"' in rendered
    assert '<div class="arithmatex"><math' in rendered and 'display="block"' in rendered
    assert "<mfrac>" in rendered and "&#x0003C;" in rendered  # the escaped "<" is read as TeX's "<"
    assert '<mi>log</mi><mspace width="0.1667em">' in rendered
    with pytest.raises(ValueError, match=r"cannot convert '\\\\notacommand\{x\}'.*not supported"):
        hook.render_math('<span class="arithmatex">\\(\\notacommand{x}\\)</span>')
    aligned = hook.render_math('<div class="arithmatex">\\[\\begin{aligned} a &= b \\\\ c &= d \\end{aligned}\\]</div>')
    assert aligned.count("<mtr>") == 2 and "&amp;" not in aligned and "<mi>&</mi>" not in aligned
    with pytest.raises(ValueError, match="not supported"):  # an alignment latex2mathml cannot lay out
        hook.render_math('<div class="arithmatex">\\[ a &= b \\\\ c &= d \\]</div>')


def test_site_loads_nothing_from_other_hosts(site: Path) -> None:
    external = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=\"(?:https?:)?//", re.IGNORECASE)
    offenders = {
        str(page.relative_to(site)): match.group(0)
        for page in site.rglob("*.html")
        if (match := external.search(page.read_text()))
    }
    assert not offenders, f"pages that load scripts, styles or images from other hosts: {offenders}"
    elbo = (site / "guide" / "elbo" / "index.html").read_text()
    assert elbo.count("<math ") >= 20 and "\\frac" not in elbo.split("<body", 1)[1].split("<script", 1)[0]


def _bash_lines(text: str) -> list[str]:
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_set_up_commands_are_what_ci_runs() -> None:
    readme = _bash_lines((ROOT / "README.md").read_text())
    assert readme[0] == "scripts/install.sh examples && .venv/bin/python examples/digits.py", readme[0]
    assert readme[1].startswith("scripts/install.sh && .venv/bin/python -m pytest"), readme[1]
    ci = (ROOT / ".ci" / "run").read_text()
    suite = readme[1].removeprefix("scripts/install.sh && ")
    assert "\nscripts/install.sh test\n" in ci and f"\n{suite}\n" in ci, ci
    script = (ROOT / "scripts" / "install.sh").read_text()
    for needed in ("apt-get update", "sudo", "(chromium)", "(chromium-driver)", "torch==2.13.0", '-e ".[$extra]"'):
        assert needed in script, needed
    installation = (DOCS / "installation.md").read_text()
    assert "torch==2.13.0" in installation and "pip install torch\n" not in installation


def test_readme_benchmark_commands_use_existing_flags() -> None:
    commands = [line for line in _bash_lines((ROOT / "README.md").read_text()) if "benchmarks/" in line]
    assert len(commands) >= 4, commands
    helps: dict[str, str] = {}
    for command in commands:
        script = re.search(r"benchmarks/\w+\.py", command).group(0)
        if script not in helps:
            result = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                                    cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True, timeout=120)
            helps[script] = result.stdout
        flags = re.findall(r"(?<=\s)--[a-z][a-z-]*", command)
        unknown = [flag for flag in flags if flag not in helps[script]]
        assert not unknown, f"README runs {script} with flags it does not define: {unknown}"
