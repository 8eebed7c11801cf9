import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Compile into a fresh inductor cache: a cache left by another version of the ops can serve stale code."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="torchinductor-tests-"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test on one torch thread (small models, where extra threads only add overhead)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def run_python() -> Callable[[str], str]:
    """Run a Python snippet in a fresh interpreter that imports this checkout; return its stdout.

    Tests of import-time behaviour use it rather than re-importing ``torchbayesian`` in the test
    process: a second import registers the library's torch operators again, and when the copy is
    dropped its registrations go with it, leaving the first copy's operator handles dangling.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(code: str) -> str:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                                check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    return run


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the documentation once with ``mkdocs build --strict``, failing on any warning."""
    site_dir = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site_dir)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    problems = [line for line in result.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert result.returncode == 0 and not problems, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return site_dir
