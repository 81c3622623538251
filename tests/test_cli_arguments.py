"""The ending every nnUNetv2_mona_* command shares (nnunet_mona.cli.arguments.run_command): a known error is one
'ERROR:' line and status 1, no traceback; Ctrl-C is status 130 with the resume hint; anything else propagates."""
import pytest

from nnunet_mona.cli.arguments import command_parser, run_command


class _KnownError(ValueError):
    pass


def _raise(error):
    def main():
        raise error
    return main


def test_known_error_prints_one_line_and_exits_1(capsys):
    with pytest.raises(SystemExit) as stop:
        run_command(_raise(_KnownError("the folder X does not exist; make it with Y")), (_KnownError,))
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "ERROR: the folder X does not exist; make it with Y" in err and "Traceback" not in err


def test_interrupt_exits_130_with_the_resume_hint(capsys):
    with pytest.raises(SystemExit) as stop:
        run_command(_raise(KeyboardInterrupt()), (_KnownError,))
    assert stop.value.code == 130 and "Run the same command again" in capsys.readouterr().err


def test_exit_status_is_mains_int_and_an_unknown_error_propagates():
    for returned, code in ((0, 0), (1, 1), ({"a result": 1}, 0), (None, 0)):
        with pytest.raises(SystemExit) as stop:
            run_command(lambda: returned, (_KnownError,))
        assert stop.value.code == code, returned
    with pytest.raises(RuntimeError):  # a bug keeps its traceback
        run_command(_raise(RuntimeError("bug")), (_KnownError,))


def test_parser_carries_the_installed_command_name():
    assert command_parser("nnUNetv2_mona_x", "what it does").format_usage().startswith("usage: nnUNetv2_mona_x")
