"""The documentation: a short README, relative links that resolve, and no references to files outside
the repository (the methods are described in docs/methods.md)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Files a link may name before they exist (written on other branches); none at present.
ALLOWED_MISSING: set[str] = set()
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / p for p in out.decode().split("\0") if p]


def test_no_references_outside_the_repository():
    """The old method notes lived outside the repository; everything points at docs/methods.md now."""
    banned = re.compile("|".join(map(re.escape, ["METHODS" + ".md", "DESIGN" + ".md", "shared" + "/"])))
    hits = []
    for path in _tracked():
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{path.relative_to(ROOT)}:{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1)
                 if banned.search(line)]
    assert not hits, "references outside the repository (use docs/methods.md):\n" + "\n".join(hits)


def test_readme_is_short():
    n = len((ROOT / "README.md").read_text())
    assert n < 12_000, f"README.md has {n:,} characters; move detail into docs/"


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # links inside code blocks are code
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (http:, mailto:) or an anchor on the same page
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        if not path.exists() and rel not in ALLOWED_MISSING:
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)}: links to missing files: {broken}"


def test_methods_covers_every_method():
    text = (ROOT / "docs" / "methods.md").read_text()
    for name in ("FedKD", "SPATL", "QuPeD", "FedDKD", "Rate–distortion", "arXiv 2108.13323", "arXiv 2111.14345",
                 "arXiv 2107.13892", "arXiv 2205.00706", "arXiv 2201.02664"):
        assert name in text, name
    from fedsqueeze.registry import CODECS
    for codec in CODECS.names():
        assert f"`{codec}" in text or codec == "pipeline", f"docs/methods.md does not describe codec {codec!r}"


def test_readme_own_model_and_data_snippet_runs(tmp_path):
    """The README's "Your own model and data" example, as a user would paste it."""
    import os
    import sys

    text = (ROOT / "README.md").read_text()
    code = re.search(r"## Your own model and data\n\n```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "snippet.py").write_text(code + "\nassert len(result.history) == 10, result.history\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
