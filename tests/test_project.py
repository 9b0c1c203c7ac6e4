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
