"""Files are the user's: names never become paths, deletions stay in the run folder, an existing run or
a user's folder is never silently replaced, one process per run folder, reports never modify a run,
and a run that fails validation leaves no folder behind."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from fedsqueeze.cli import main
from fedsqueeze.config import ConfigError, check_name
from fedsqueeze.engine import rundir

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "configs" / "digits-quick.toml")

BAD_NAMES = {
    "slash": "a/b",
    "dotdot": "..",
    "dot": ".",
    "parent path": "../escape",
    "absolute": "/tmp/fedsqueeze-escape",
    "newline": "a\nb",
    "tab": "a\tb",
    "300 chars": "x" * 300,
    "empty": "",
    "backslash": "a\\b",
    "hidden": ".hidden",
}


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(out: Path, *extra: str, rounds: int = 1) -> int:
    return main(["run", QUICK, "--rounds", str(rounds), "--out", str(out), "--quiet", *extra])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert _run(out, rounds=2) == 0
    return out


# ---- 1. names are names ------------------------------------------------------------------------
@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_bad_run_names_are_refused_and_nothing_is_written(tmp_path, capsys, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outputs = tmp_path / "outputs"
    rc = main(["run", QUICK, "--rounds", "1", "--quiet", "--set", f"name={_toml_str(name)}",
               "--set", f"output_dir={_toml_str(str(outputs))}"])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "config key 'name'" in line and "--out" in line
    assert not outputs.exists() and os.listdir(tmp_path) == []
    assert not Path("/tmp/fedsqueeze-escape").exists()


@pytest.mark.parametrize("good", ["digits-quick", "fedavg+ef=3lc,v2@lab", "run 1", "_x", "a" * 100])
def test_safe_names_pass(good):
    assert check_name(good, "name") == good


def _suite(tmp_path: Path, suite_name: str, run_name: str) -> Path:
    base = (ROOT / "configs" / "digits-quick.toml").read_text().replace("rounds = 15", "rounds = 1")
    (tmp_path / "base.toml").write_text(base)
    path = tmp_path / "suite.toml"
    path.write_text(f"name = {_toml_str(suite_name)}\nbase = \"base.toml\"\n[[run]]\nname = {_toml_str(run_name)}\n")
    return path


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
@pytest.mark.parametrize("where", ["suite", "run"])
def test_bad_suite_and_suite_run_names_are_refused(tmp_path, capsys, name, where):
    path = _suite(tmp_path, name if where == "suite" else "tiny", name if where == "run" else "fp32")
    out = tmp_path / "out"
    assert main(["compare", str(path), "--out", str(out), "--quiet", "--rerun", "fp32"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert ("suite key 'name'" if where == "suite" else "[[run]] key 'name'") in line
    assert not out.exists()


def test_bad_network_profile_name_is_refused(tmp_path):
    from fedsqueeze.compare.network import parse_profiles
    with pytest.raises(ConfigError, match="network profile name"):
        parse_profiles([{"name": "../x", "up_mbps": 1, "down_mbps": 1, "latency_ms": 0}])


# ---- 2. deletions stay inside the run folder ---------------------------------------------------------
def test_rerun_never_deletes_outside_out(tmp_path, capsys):
    """The old bug: a suite name that was an absolute path made --rerun rmtree a folder outside --out. Names
    are refused now; and a suite run folder that is a link to elsewhere is refused, not followed."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("mine")
    (victim / "config.json").write_text("{}")
    path = _suite(tmp_path, str(victim), "fp32")
    out = tmp_path / "out"
    assert main(["compare", str(path), "--out", str(out), "--quiet", "--rerun", "fp32"]) == 2
    capsys.readouterr()
    (out / "tiny").mkdir(parents=True)
    os.symlink(victim, out / "tiny" / "fp32")
    path = _suite(tmp_path, "tiny", "fp32")
    before = _hashes(victim)
    assert main(["compare", str(path), "--out", str(out), "--quiet", "--rerun", "fp32"]) == 2
    assert "outside" in _one_error_line(capsys.readouterr().err)
    assert _hashes(victim) == before


def test_rerun_replaces_the_runs_own_files_only(tmp_path, capsys):
    path = _suite(tmp_path, "tiny", "fp32")
    out = tmp_path / "out"
    assert main(["compare", str(path), "--out", str(out), "--quiet"]) == 0
    run = out / "tiny" / "fp32"
    (run / "notes.txt").write_text("my notes")
    path.write_text(path.read_text() + 'set = {"codec.up" = "fp16"}\n')
    assert main(["compare", str(path), "--out", str(out), "--quiet", "--rerun", "fp32"]) == 0
    assert (run / "notes.txt").read_text() == "my notes"
    assert json.loads((run / "config.json").read_text())["codec"]["up"] == "fp16"


def test_remove_inside_refuses_paths_outside(tmp_path):
    root, other = tmp_path / "run", tmp_path / "other"
    root.mkdir()
    other.mkdir()
    (other / "f").write_text("x")
    with pytest.raises(Exception, match="outside the run folder"):
        rundir.remove_inside(other / "f", root)
    with pytest.raises(Exception, match="outside the run folder"):
        rundir.remove_inside(root / ".." / "other" / "f", root)
    assert (other / "f").read_text() == "x"


def test_state_folder_linked_out_of_the_run_is_refused(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "7.r1.pt").write_bytes(b"user data with a state-file name")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(outside, run / "clients")
    assert _run(run, "--overwrite") == 2
    capsys.readouterr()
    assert (outside / "7.r1.pt").read_bytes() == b"user data with a state-file name"


# ---- 3. --out onto an existing folder ------------------------------------------------------------------
def test_out_onto_existing_run_is_refused_then_overwrite_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out) == 0
    capsys.readouterr()
    before = _hashes(out)
    assert _run(out) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert _hashes(out) == before
    # --resume continues it
    assert main(["run", "--resume", str(out), "--rounds", "2", "--quiet"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    # --overwrite replaces its own files and keeps the user's
    (out / "notes.txt").write_text("keep me")
    assert _run(out, "--overwrite") == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert (out / "notes.txt").read_text() == "keep me"
    capsys.readouterr()
    # contradictions
    assert main(["run", "--resume", str(out), "--out", str(tmp_path / "other"), "--quiet"]) == 2
    assert "contradicts" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "other").exists()
    assert main(["run", "--resume", str(out), "--overwrite", "--quiet"]) == 2
    _one_error_line(capsys.readouterr().err)


def test_foreign_folder_is_refused_and_never_written_over(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("chapter 1")
    before = _hashes(mine)
    assert _run(mine) == 2
    assert "not a fedsqueeze run" in _one_error_line(capsys.readouterr().err)
    assert _hashes(mine) == before and sorted(os.listdir(mine)) == ["thesis.tex"]
    # a file with a name a run writes: refused even with --overwrite
    (mine / "summary.csv").write_text("my own summary")
    before = _hashes(mine)
    assert _run(mine, "--overwrite") == 2
    assert "never replaces files it did not make" in _one_error_line(capsys.readouterr().err)
    assert _hashes(mine) == before and sorted(os.listdir(mine)) == ["summary.csv", "thesis.tex"]
    # without a clash, --overwrite writes beside the user's files and keeps them byte for byte
    (mine / "summary.csv").unlink()
    assert _run(mine, "--overwrite") == 0
    assert (mine / "thesis.tex").read_text() == "chapter 1" and (mine / "metrics.jsonl").exists()


def test_python_api_refuses_and_overwrites_like_the_cli(tmp_path):
    import fedsqueeze
    from fedsqueeze.config import load_config

    cfg = load_config(QUICK, ["rounds=1"])
    fedsqueeze.run(cfg, run_dir=tmp_path / "r", plot=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        fedsqueeze.run(cfg, run_dir=tmp_path / "r", plot=False)
    fedsqueeze.run(cfg, run_dir=tmp_path / "r", overwrite=True, plot=False)


# ---- 4. one process per run folder ------------------------------------------------------------------------
def test_concurrent_resume_is_refused(finished_run, capsys):
    before = _hashes(finished_run)
    with rundir.RunLock(finished_run):
        assert main(["run", "--resume", str(finished_run), "--rounds", "3", "--quiet"]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"in use by process {os.getpid()}" in line and "choose another --out" in line
        assert _run(finished_run, "--overwrite") == 2
        assert "in use by process" in _one_error_line(capsys.readouterr().err)
    after = _hashes(finished_run)
    assert {k: v for k, v in after.items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}


def test_lock_is_released_when_the_holder_dies(tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "f"
    folder.mkdir()
    code = (f"import os, signal; from fedsqueeze.engine.rundir import RunLock; RunLock({str(folder)!r}).acquire(); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    subprocess.run([sys.executable, "-c", code], check=False)
    with rundir.RunLock(folder):  # the kernel dropped the dead process's lock
        pass


# ---- 5. reports never modify a run --------------------------------------------------------------------------
def test_personal_and_plot_leave_the_run_byte_for_byte(finished_run, tmp_path, capsys, monkeypatch):
    before = _hashes(finished_run)
    assert main(["personal", str(finished_run), "--csv", str(tmp_path / "clients.csv")]) == 0
    assert main(["plot", str(finished_run), "--out", str(tmp_path / "p.png")]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["plot", str(finished_run)]) == 0  # default: comparison.png here, not in the run
    assert (tmp_path / "comparison.png").exists() and (tmp_path / "clients.csv").exists()
    assert _hashes(finished_run) == before


def test_personal_on_a_corrupt_checkpoint_is_one_line_and_changes_nothing(finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "corrupt"
    shutil.copytree(finished_run, run)
    ckpt = run / "checkpoint.pt"
    raw = bytearray(ckpt.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(raw))
    (run / ".metrics.jsonl.abc.tmp").write_text("a temp file a crash left")  # resume would remove it; reports don't
    before = _hashes(run)
    lines = len((run / "metrics.jsonl").read_text().splitlines())
    capsys.readouterr()
    assert main(["personal", str(run), "--csv", str(tmp_path / "c.csv")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "corrupt" in line and "--resume" in line
    assert main(["plot", str(run), "--out", str(tmp_path / "p.png")]) == 0
    assert _hashes(run) == before and lines == 2
    assert not (tmp_path / "c.csv").exists()


# ---- 6. a run folder appears only once everything validated -------------------------------------------------
@pytest.mark.parametrize("bad", [
    ["--set", "model.name=nope"],
    ["--set", "model.options={width=-3}"],
    ["--set", "algorithm.name=nope"],
    ["--set", "data.source=fashion_mnist", "--data-dir", "{empty}/missing"],
    ["--set", "data.num_clients=100000"],
    ["--set", "codec.up='topk(fraction=7)'"],
], ids=["model", "model option", "algorithm", "missing data", "too many clients", "codec option"])
def test_failed_validation_leaves_no_folder(tmp_path, capsys, bad):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "new" / "run"
    args = [a.replace("{empty}", str(tmp_path / "empty")) for a in bad]
    assert _run(out, *args) == 2
    err = capsys.readouterr().err
    assert len([ln for ln in err.splitlines() if ln.startswith("error: ")]) == 1 and "Traceback" not in err
    assert not out.exists() and not out.parent.exists()
