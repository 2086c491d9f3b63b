"""What the entry points share: writing and reading a run's flags, clean errors."""

import functools
import os
import sys

from absl import flags, logging

# config defines the flags that write_flags saves.
from ctc_trainer import config, options  # noqa: F401
from ctc_trainer.errors import ConfigError, UserError

FLAGS_FILE = "flags.cfg"


def write_flags(workdir: str) -> str:
  """Writes the effective ctc_trainer flags to WORKDIR/flags.cfg; returns the path.

  `--flagfile=WORKDIR/flags.cfg` then reproduces the run.
  """
  os.makedirs(workdir, exist_ok=True)
  lines = [f"# Effective flags of this run. Reproduce: python -m ctc_trainer.train "
           f"--flagfile={os.path.join(workdir, FLAGS_FILE)}"]
  for name in ("workdir", "charset", "model", *options.defined_flags()):
    flag = flags.FLAGS[name]
    if flag.value is not None:
      lines.append(flag.serialize())
  path = os.path.join(workdir, FLAGS_FILE)
  # A temporary name per process: the workers of a multi-worker run share WORKDIR.
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(tmp, path)
  return path


# Flags shared by the entry points that read a trained run (evaluate, predict, export).
flags.DEFINE_string("checkpoint", "latest",
                    "Which checkpoint of --workdir: latest, best, or a path prefix.")
flags.DEFINE_bool("json", False, "Print machine-readable JSON instead of text.")


def apply_workdir_flags() -> None:
  """Re-parses flags as WORKDIR/flags.cfg followed by the command line, so a run's
  own settings are the defaults and anything given on the command line wins."""
  path = os.path.join(os.path.expanduser(flags.FLAGS.workdir), FLAGS_FILE)
  if not os.path.exists(path):
    raise ConfigError(f"{path} not found: --workdir must be a training run")
  # sys.argv, not app.run's argv: that one holds only the positional arguments.
  flags.FLAGS([sys.argv[0], f"--flagfile={path}"] + sys.argv[1:])


def exit_on_user_error(main):
  """Wraps an entry point's main: a UserError (errors.py) or an OSError (a file the
  user named cannot be read or written) prints one line and exits with its code (2,
  or 128 + the signal for an interrupted run)."""
  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except (UserError, OSError) as e:
      code = getattr(e, "exit_code", 2)
      logging.error("%s: %s", type(e).__name__, e)
      print(str(e) if code != 2 else f"error: {e}", file=sys.stderr)
      sys.exit(code)
  return wrapped
