"""What a new user meets: the README quickstart is two commands and CI runs the second one as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quickstart_is_two_commands_and_ci_runs_the_test_command():
    commands = quickstart_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == commands[1]
    assert commands[1].endswith("pytest") and "torch==2.13.0" in commands[0]


def test_quickstart_main_command_uses_files_in_the_repository():
    main = quickstart_commands()[0]
    for word in main.split():
        if word.startswith("examples/"):
            assert (ROOT / word).exists(), word


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's API block, as written, on the shipped model (it reads a.json and b.json)."""
    import json

    section = (ROOT / "README.md").read_text().split("## Python API", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        json.dump(
            {"size": [64, 64], "objects": [{"category": "tree", "bbox": [10, 20, 12, 30]}]}, open(f"{name}.json", "w")
        )
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "scene.png").exists() and (tmp_path / "layers" / "layout.json").exists()
    assert len(namespace["images"]) == 2 and len(namespace["images"][0]) == 2  # 2 layouts x 2 seeds


def test_ruff_finds_nothing_to_lint_or_reformat():
    """The lint and format rules of pyproject.toml hold for the whole tree (CI runs them here)."""
    import shutil
    import subprocess

    ruff = shutil.which("ruff")
    assert ruff, "ruff is not installed: pip install -e '.[test]'"
    for args in (["check", "."], ["format", "--check", "."]):
        res = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"ruff {' '.join(args)}:\n{res.stdout}{res.stderr}"
