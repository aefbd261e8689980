"""A non-editable install: the console scripts work, and the shipped model is found from any folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from vae.run.checkpoint import PRETRAINED

SKIP = shutil.ignore_patterns(".git", ".ci-venv", ".venv", "venv", "checkpoints", "data", "build", "dist",
                              "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis", ".gpu", "runs", "out")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install --no-deps --target SITE`` of a copy of this checkout (no editable finder, no build in the repo)."""
    root = tmp_path_factory.mktemp("install")
    source, site = root / "source", root / "site"
    shutil.copytree(REPO, source, ignore=SKIP)
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                             "--target", str(site), str(source)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "No module named" in result.stderr and "setuptools" in result.stderr:
        pytest.skip("setuptools is not installed: cannot build without network")
    assert result.returncode == 0, result.stderr
    return site


def run_installed(site: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}  # before site-packages, and before an editable install's finder
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_shipped_model_is_package_data_found_from_another_folder(installed, fake_mnist, tmp_path):
    assert (installed / "vae" / "pretrained" / PRETRAINED.name).is_file()
    result = run_installed(installed, [sys.executable, "-m", "vae.evaluate", "--k", "2", "--limit", "20",
                                       "--no-progress", "--data-dir", str(fake_mnist)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / f"{PRETRAINED.stem}-eval-test-k2-limit20.json").read_text())
    assert saved["checkpoint"] == f"vae/pretrained/{PRETRAINED.name}" and saved["images"] == 20
    where = run_installed(installed, [sys.executable, "-c", "import vae; print(vae.__file__)"], cwd=tmp_path)
    assert Path(where.stdout.strip()).parent == installed / "vae"  # the installed copy ran, not the checkout


@pytest.mark.parametrize("script", ["fullcov-train", "fullcov-evaluate", "fullcov-visualize", "fullcov-toy", "fullcov-gaps"])
def test_console_scripts_run_and_name_themselves(installed, tmp_path, script):
    path = installed / "bin" / script
    assert path.is_file()
    assert run_installed(installed, [str(path), "--help"], cwd=tmp_path).returncode == 0
    bad = run_installed(installed, [str(path), "--no-such-flag"], cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(f"{script}: error:"), bad.stderr
