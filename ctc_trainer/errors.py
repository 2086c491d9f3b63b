"""The errors a user causes and can fix: bad flags, data, workdirs, checkpoints, exports.

Every one derives from UserError. The CLIs (cli.exit_on_user_error) print its message
as one line, with no traceback, and exit with its exit_code; anything else is a bug
and keeps its traceback. Library code raises these; it never exits.
"""

import signal


class UserError(Exception):
  """Something the user can fix; the message says what and how."""
  exit_code = 2


class ConfigError(UserError, ValueError):
  """A flag or config value is invalid; the message says which and why."""


class DataError(UserError, ValueError):
  """Bad input data; the message names the file (and line, or record) at fault."""


class CharsetError(UserError, ValueError):
  """A charset file or symbol that cannot be used."""


class CheckpointError(UserError, RuntimeError):
  """No usable checkpoint, or one that cannot be written."""


class ExportError(UserError, RuntimeError):
  """An export that cannot be written where or as asked."""


class DistributeError(UserError, RuntimeError):
  """A distributed run lost a peer or cannot be set up."""


class NonFiniteError(UserError, RuntimeError):
  """Too many consecutive steps had a non-finite loss or gradient."""


class TrainingInterrupted(UserError):
  """SIGTERM or SIGINT stopped the run after a checkpoint was saved."""

  def __init__(self, signum: int, step: int):
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; "
                     "checkpoint saved, run the same command to resume")
    self.signum = signum
    self.exit_code = 128 + signum
