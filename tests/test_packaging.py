"""The package stands on its own: the sdist carries and runs its own tests, the wheel holds
only the package, the metadata says what a user needs (license, version, URLs).

Both are built offline, from a copy of this checkout: ``setup.py sdist`` and
``pip wheel --no-build-isolation --no-index`` (with the ``wheel`` package of the ``test``
extra, which setuptools before 70.1 needs for wheels).
"""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import List

import pytest

from processes import ROOT, child_env

pytestmark = pytest.mark.timeout(180)

BROKERS = ("ibkr", "upstox", "firstock", "clearstreet")
_JUNK = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", "build", "dist", "*.egg-info",
                               ".pytest_cache", ".mypy_cache", "results*.json")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean copy of the checkout (building writes into the source tree)."""
    copy = tmp_path_factory.mktemp("src") / "brokerfeeds"
    shutil.copytree(ROOT, copy, ignore=_JUNK)
    return copy


def _version() -> str:
    from brokerfeeds import __version__

    return __version__


def _python(*args: str, cwd: Path, env: dict = None, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=env)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_the_sdist_carries_its_tests_and_runs_them(source: Path, tmp_path: Path) -> None:
    _python("setup.py", "-q", "sdist", "-d", str(tmp_path / "dist"), cwd=source)
    archive = tmp_path / "dist" / f"brokerfeeds-{_version()}.tar.gz"
    top = f"brokerfeeds-{_version()}/"
    with tarfile.open(archive) as tar:
        names = {name[len(top):] for name in tar.getnames()}
        tar.extractall(tmp_path / "unpacked")
    needed = ["LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in",
              "brokerfeeds/py.typed", "tests/conftest.py", "tests/helpers.py", "tests/processes.py",
              "tests/ibkr_fixtures.py", "tests/attacks/conftest.py", "benchmarks/__init__.py",
              "benchmarks/harness.py", "examples/ibkr_orders.py", "examples/qt_orders_window.py",
              *(f"docs/{broker}.md" for broker in BROKERS)]
    assert not [name for name in needed if name not in names]
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    unpacked = tmp_path / "unpacked" / top
    env = child_env()
    env["PYTHONPATH"] = str(unpacked)  # the unpacked package, not this checkout
    where = _python("-c", "import brokerfeeds; print(brokerfeeds.__file__)", cwd=unpacked, env=env)
    assert Path(where.stdout.strip()).resolve().is_relative_to(unpacked.resolve())
    ran = _python("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_units.py",
                  "tests/test_benchmarks_smoke.py::test_ws_frame_lengths", cwd=unpacked, env=env)
    assert " passed" in ran.stdout and "failed" not in ran.stdout and "error" not in ran.stdout.lower()


def _wheel(source: Path, into: Path) -> Path:
    try:
        import wheel  # noqa: F401
    except ImportError:
        import setuptools

        if tuple(int(p) for p in setuptools.__version__.split(".")[:2]) < (70, 1):
            pytest.skip("building a wheel offline needs the 'wheel' package with this setuptools "
                        "(pip install -e '.[test]')")
    _python("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(into),
            str(source), cwd=source, timeout=170)
    wheels: List[Path] = list(into.glob("brokerfeeds-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_holds_only_the_package_and_says_what_it_is(source: Path, tmp_path: Path) -> None:
    built = _wheel(source, tmp_path)
    dist_info = f"brokerfeeds-{_version()}.dist-info/"
    with zipfile.ZipFile(built) as zf:
        names = zf.namelist()
        metadata = email.message_from_bytes(zf.read(dist_info + "METADATA"))
        entry_points = zf.read(dist_info + "entry_points.txt").decode()
        licenses = [n for n in names if n.startswith(dist_info) and "LICENSE" in n]
        license_text = zf.read(licenses[0]).decode() if licenses else ""
    strays = [n for n in names if not n.startswith(("brokerfeeds/", dist_info))]
    assert not strays  # no tests/, benchmarks/, examples/, docs/
    assert "brokerfeeds/py.typed" in names and "brokerfeeds/__main__.py" in names
    assert "brokerfeeds/testing/ibkr.py" in names and "brokerfeeds/demo/upstox.py" in names
    for broker in ("ibkr", "upstox", "firstock", "clearstreet"):  # brokers split into a subpackage each
        assert {f"brokerfeeds/brokers/{broker}/{module}.py" for module in ("__init__", "protocol", "feed")} <= set(names)
    assert "MIT License" in license_text and "brokerfeeds contributors" in license_text
    assert metadata["Version"] == _version()
    assert metadata["License"] == "MIT" and metadata["Author"] == "brokerfeeds contributors"
    classifiers = metadata.get_all("Classifier")
    assert "License :: OSI Approved :: MIT License" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert any(c.startswith("Programming Language :: Python :: 3.") for c in classifiers)
    urls = metadata.get_all("Project-URL")
    assert any(u.endswith("https://github.com/brokerfeeds/brokerfeeds") for u in urls)
    assert metadata["Requires-Python"] == ">=3.9"
    assert "brokerfeeds = brokerfeeds.cli:main" in entry_points
    extras = metadata.get_all("Provides-Extra")
    assert {"sim", "test", "examples"} <= set(extras)


def test_one_source_for_the_version() -> None:
    setup_cfg = (ROOT / "setup.cfg").read_text()
    assert "version = attr: brokerfeeds.__version__" in setup_cfg
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "[build-system]" in pyproject and "[project]" not in pyproject  # metadata stays in setup.cfg


def test_docstrings_cite_docs_that_exist() -> None:
    """Every ``docs/<page>.md`` a module cites exists (the sdist ships docs/ too), and nothing
    cites the old ``protocols/`` notes, which were never part of the repository."""
    import re

    cited = set()
    for module in (ROOT / "brokerfeeds").rglob("*.py"):
        text = module.read_text(encoding="utf-8")
        assert "protocols/" not in text, module
        cited.update(re.findall(r"docs/([\w-]+\.md)", text))
    assert {f"{broker}.md" for broker in BROKERS} <= cited
    assert all((ROOT / "docs" / page).is_file() for page in cited), cited
