"""The install files agree with each other and with what the code needs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def pins(lines):
    return dict(re.match(r"\s*([A-Za-z0-9_.\-]+)==(\S+)", line).groups() for line in lines if re.match(r"\s*[A-Za-z0-9_.\-]+==", line))


def test_environment_yml_pins_equal_constraints():
    constraints = pins((ROOT / "constraints.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pins(pip_lines) == constraints


def test_core_imports_with_torch_and_transformers_only():
    """hivtp's core must run where only torch + transformers exist (GPU machines): importing it must
    not pull in hydra, lmms-eval, pandas or matplotlib."""
    code = (
        "import sys, hivtp, hivtp.zoo;"
        "bad = [m for m in ('hydra', 'omegaconf', 'lmms_eval', 'pandas', 'matplotlib', 'datasets') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme.split("\n## ")[0]
    assert "make test" in (ROOT / ".ci/run").read_text()
