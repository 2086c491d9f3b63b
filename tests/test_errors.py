"""The user-facing errors: one base class, and what the CLIs make of them."""

import signal

import pytest

from ctc_trainer import cli, errors


@pytest.mark.parametrize("error_type", [
    errors.ConfigError, errors.DataError, errors.CharsetError, errors.CheckpointError,
    errors.ExportError, errors.DistributeError, errors.NonFiniteError])
def test_user_errors_print_one_line_and_exit_2(capsys, error_type):
  @cli.exit_on_user_error
  def main(argv):
    raise error_type("what went wrong, and how to fix it")

  with pytest.raises(SystemExit) as exit_info:
    main(["prog"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err == "error: what went wrong, and how to fix it\n"


def test_interrupted_run_exits_with_128_plus_signal(capsys):
  @cli.exit_on_user_error
  def main(argv):
    raise errors.TrainingInterrupted(signal.SIGTERM, 7)

  with pytest.raises(SystemExit) as exit_info:
    main(["prog"])
  assert exit_info.value.code == 128 + signal.SIGTERM
  assert "stopped by SIGTERM at step 7" in capsys.readouterr().err


def test_bugs_keep_their_traceback():
  @cli.exit_on_user_error
  def main(argv):
    raise KeyError("a bug, not a user error")

  with pytest.raises(KeyError):
    main(["prog"])
