import pytest

from generator.__main__ import main, parse_args
from infra.settings import GeneratorSettings


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rate", "0"], "must be greater than 0"),
        (["--rate", "fast"], "is not a whole number"),
        (["--burst", "-5"], "must be greater than 0"),
        (["--duration", "soon"], "is not a number"),
    ],
)
def test_bad_arguments_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv, GeneratorSettings())
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_thousands_separators_are_accepted():
    assert parse_args(["--rate", "200_000"], GeneratorSettings()).rate == 200_000


def test_unreachable_database_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("POSTGRES_PORT", "1")  # nothing listens there
    assert main(["--burst", "10"]) == 1
    assert "Is the stack up? Run `make up`" in capsys.readouterr().err


def test_invalid_environment_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("GENERATION_RATE", "-1")
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "GENERATION_RATE" in err
