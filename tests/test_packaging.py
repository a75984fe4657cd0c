import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    declared |= {_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {_name(r) for r in pip_section} == declared
    assert any(str(d).startswith("python") for d in env["dependencies"] if isinstance(d, str))


def test_pyproject_declares_lower_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert all(">=" in r for r in project["dependencies"]), project["dependencies"]
    assert project["requires-python"] == ">=3.10"


def test_import_is_cheap_and_lazy():
    # what makes the import cheap is what it does not load; its time is measured by benchmarks/foundation.py
    heavy = ("torch", "diffusers", "transformers", "optimum.quanto", "pandas", "matplotlib")
    code = f"import sys; import lab; print(*[m in sys.modules for m in {heavy!r}])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"] * len(heavy), dict(zip(heavy, out.stdout.split()))


def test_public_api_resolves():
    import lab

    for name in lab.__all__:
        assert getattr(lab, name) is not None, name
