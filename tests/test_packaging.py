"""Packaging: presets shipped as package data (in sync with configs/), optional extras with one-line
errors, a CLI that starts without torch, and a wheel that installs into a fresh virtual environment and
runs a preset by name through its console script outside the checkout."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "src" / "fedsqueeze" / "presets"


def _tomls(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.toml"))}


@pytest.mark.parametrize("sub", ["", "suites"])
def test_packaged_presets_match_configs(sub):
    """configs/ is the source of truth; the package data must be an exact copy."""
    want, have = _tomls(ROOT / "configs" / sub), _tomls(PRESETS / sub)
    assert want, f"no configs in configs/{sub}"
    stale = sorted(set(want) ^ set(have)) + sorted(n for n in want if n in have and want[n] != have[n])
    assert not stale, f"src/fedsqueeze/presets/{sub} differs from configs/{sub} in {stale}: " \
                      "run `python scripts/sync_presets.py`"


def test_preset_names_resolve_and_describe():
    from fedsqueeze import presets
    from fedsqueeze.config import load_config

    assert "digits-quick" in presets.names() and "fmnist-demo" in presets.names()
    for name in presets.names():
        assert presets.describe(name), f"preset {name} has no leading comment line"
        assert load_config(name).name  # every preset parses and validates
    assert load_config("digits-quick").rounds == load_config(ROOT / "configs/digits-quick.toml").rounds
    assert presets.path("../configs/digits-quick") is None


def test_unknown_config_names_presets():
    from fedsqueeze.config import load_config
    from fedsqueeze.errors import ConfigError

    with pytest.raises(ConfigError, match="`fedsqueeze presets` lists them"):
        load_config("no-such-preset")


def _cli_modules(*argv: str, cwd: Path = ROOT) -> tuple[int, str, list[str]]:
    """Run the CLI in a fresh interpreter; its exit code, output and the heavy modules it imported."""
    code = ("import sys\nfrom fedsqueeze.cli import main\n"
            "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
            "heavy = [m for m in ('torch', 'numpy', 'matplotlib', 'sklearn', 'flwr') if m in sys.modules]\n"
            "print('HEAVY=' + ','.join(heavy))\nsys.exit(rc or 0)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=60)
    heavy = p.stdout.rsplit("HEAVY=", 1)[1].strip()
    return p.returncode, p.stdout + p.stderr, [m for m in heavy.split(",") if m]


@pytest.mark.parametrize("argv", [("--help",), ("run", "--help"), ("flower", "--help"), ("presets",)])
def test_cli_starts_without_torch(argv):
    rc, out, heavy = _cli_modules(*argv)
    assert rc == 0, out
    assert heavy == [], f"`fedsqueeze {' '.join(argv)}` imported {heavy}; import them inside the commands"


def test_presets_lists_descriptions():
    rc, out, _ = _cli_modules("presets")
    assert rc == 0
    assert "digits-quick" in out and "A fast sanity run" in out


def test_init_writes_a_runnable_starter_and_refuses_to_overwrite(tmp_path):
    from fedsqueeze.config import load_config

    target = tmp_path / "exp.toml"
    rc, out, heavy = _cli_modules("init", str(target))
    assert rc == 0 and target.is_file() and heavy == [], out
    assert target.read_text().startswith("#")
    assert load_config(target).data.source == "digits"
    before = target.read_text()
    rc, out, _ = _cli_modules("init", str(target))
    assert rc == 2 and "already exists" in out and out.count("error:") == 1
    assert target.read_text() == before


def test_digits_without_sklearn_names_the_extra(monkeypatch):
    from fedsqueeze.data.sources import load_digits
    from fedsqueeze.errors import DataError

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match=r"pip install 'fedsqueeze\[digits\]'"):
        load_digits()


def test_run_without_matplotlib_skips_the_plot(monkeypatch, tmp_path):
    import fedsqueeze
    from conftest import digits_config
    from fedsqueeze.errors import MissingExtraError

    for mod in ("matplotlib", "matplotlib.pyplot", "fedsqueeze.metrics.plots", "fedsqueeze.compare.plots"):
        monkeypatch.setitem(sys.modules, mod, None) if mod.startswith("matplotlib") else \
            monkeypatch.delitem(sys.modules, mod, raising=False)
    result = fedsqueeze.run(digits_config(rounds=1), run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "summary.csv").exists() and not (tmp_path / "run" / "accuracy_vs_mb.png").exists()
    notes = [w for w in result.warnings if "fedsqueeze[plots]" in w]
    assert len(notes) == 1 and "\n" not in notes[0]
    from fedsqueeze.metrics.results import read_history  # noqa: F401  (the results side stays importable)
    with pytest.raises(MissingExtraError, match=r"pip install 'fedsqueeze\[plots\]'"):
        from fedsqueeze.metrics.plots import plot_runs  # noqa: F401


def test_extras_declared():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = " ".join(meta["dependencies"])
    assert "scikit-learn" not in deps and "matplotlib" not in deps and "flwr" not in deps
    extras = meta["optional-dependencies"]
    assert any(d.startswith("scikit-learn") for d in extras["digits"])
    assert any(d.startswith("matplotlib") for d in extras["plots"])
    assert any(d.startswith("flwr>=1.41") for d in extras["flower"])
    assert any(d.startswith("tomli-w") for d in extras["flower"])  # fedsqueeze.flower.app_template imports it
    assert any(d.startswith("flwr[simulation]>=1.41") for d in extras["sim"])  # `fedsqueeze flower sim` (Ray)
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert '-e ".[test,flower,sim,digits,plots]"' in setup  # everything the tests need


def _build_wheel(tmp: Path) -> Path:
    """A wheel from a clean copy of the sources (no stale build/ folder can leak into it)."""
    src = tmp / "src-copy"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    try:  # offline and fast: this environment's setuptools, when it meets pyproject's build requirement
        isolation = ["--no-build-isolation"] if int(version("setuptools").split(".")[0]) >= 68 else []
    except PackageNotFoundError:
        isolation = []
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", *isolation, "-q",
                    "--disable-pip-version-check", "-w", str(tmp / "dist")], check=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("fedsqueeze-*.whl")
    return wheel


def test_wheel_contents_and_run_outside_checkout(tmp_path):  # ~9 s: not marked slow
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "fedsqueeze").rglob("*.py")}
    assert not modules - names, f"modules missing from the wheel: {sorted(modules - names)}"
    for p in (ROOT / "configs").rglob("*.toml"):
        assert f"fedsqueeze/presets/{p.relative_to(ROOT / 'configs').as_posix()}" in names
    assert "fedsqueeze/py.typed" in names
    (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    meta = zipfile.ZipFile(wheel).read(meta_name).decode()
    assert "Apache-2.0" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert "Provides-Extra: digits" in meta and "Provides-Extra: plots" in meta

    # installed into a fresh virtual environment (its own interpreter, site-packages and console script);
    # its dependencies come from this environment through one .pth line (a path line: the checkout's
    # editable-install .pth files there are not processed), then run by preset name from a folder with no
    # configs/ and no checkout on sys.path
    venv, work = tmp_path / "venv", tmp_path / "elsewhere"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}  # no checkout in sight
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
                    "--disable-pip-version-check", str(wheel)], check=True, timeout=300, env=env)
    import sysconfig

    Path(purelib, "_deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    p = subprocess.run([str(py), "-c", "import fedsqueeze, sys; print(fedsqueeze.__file__)"],
                       capture_output=True, text=True, cwd=work, env=env, timeout=60)
    assert p.stdout.strip().startswith(purelib), p.stdout + p.stderr  # the wheel's copy, not the checkout's
    p = subprocess.run([str(venv / "bin" / "fedsqueeze"), "run", "digits-quick", "--set", "rounds=1", "--quiet",
                        "--workers", "0", "--out", str(work / "run")], capture_output=True, text=True, cwd=work,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (work / "run" / "summary.csv").is_file()


def test_flower_app_declares_the_extras_its_nodes_need():
    from fedsqueeze.config import load_config
    from fedsqueeze.flower.app_template import pyproject

    assert "fedsqueeze[flower,digits]" in pyproject(load_config("digits-flower"))["project"]["dependencies"]
    deps = pyproject(load_config("fmnist-demo"))["project"]["dependencies"]
    assert "fedsqueeze[flower]" in deps  # no scikit-learn, no matplotlib on the SuperNodes
