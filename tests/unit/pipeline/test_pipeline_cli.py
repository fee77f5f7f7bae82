"""``python -m pipeline --help`` names every command, and each command answers its own --help."""

from __future__ import annotations

import pytest

from pipeline.__main__ import COMMANDS, main


def test_the_help_names_every_command_with_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    listed = out.split("commands (python -m pipeline COMMAND --help for its flags):\n", 1)[1].split("\n\n", 1)[0]
    assert [line.split()[0] for line in listed.splitlines()] == list(COMMANDS)
    for name, (_, text) in COMMANDS.items():
        assert f"{name}  " in listed and text in listed


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_answers_its_own_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m pipeline {command} ")
