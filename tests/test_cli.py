"""The `babelgate` entry point: usage mistakes are one message and exit code 2, never a
traceback."""

from __future__ import annotations

import pytest

from babelgate.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["no-such-command"], "No such command"),
        (["run", "--no-such-option"], "No such option"),
        (["run", "--n-test", "zero"], "Invalid value"),
    ],
)
def test_usage_errors_exit_2_without_traceback(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
