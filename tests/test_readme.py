"""The README's set-up commands are the ones CI runs."""

from __future__ import annotations

import re

from conftest import ROOT


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    assert len(commands) == 2
    test_command = commands[1]
    assert "pytest" in test_command and test_command.startswith("python3 -m venv")
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_installs_torch_first():
    for command in readme_commands():
        assert command.index("pip install torch==2.13.0") < command.index("pip install -e")
