"""Train a CTC recognizer.

  python -m ctc_trainer.train --flagfile=configs/demo_ocr.cfg --workdir=runs/demo

Flags are defined in ctc_trainer/config.py (`--helpfull` lists them). The run resumes
automatically from the latest checkpoint in --workdir.
"""

import os
import signal

from absl import app, flags, logging

from ctc_trainer import cli, config, loop
from ctc_trainer.data import throughput

# Testing only: with CTC_TRAINER_TEST_KILL_AFTER_STEP=N in the environment the process
# SIGKILLs itself right after step N is done (its checkpoint written, if one was due),
# so that tests kill a run at a known point instead of after a random sleep.
KILL_AFTER_STEP = "CTC_TRAINER_TEST_KILL_AFTER_STEP"


def _kill_switch():
  """The after_step hook for loop.train_and_evaluate, or None when not testing."""
  if not os.environ.get(KILL_AFTER_STEP):
    return None
  kill_step = int(os.environ[KILL_AFTER_STEP])

  def after_step(step):
    if step == kill_step:
      os.kill(os.getpid(), signal.SIGKILL)
  return after_step


@cli.exit_on_user_error
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cfg = config.from_flags()
  if flags.FLAGS.input_only:
    stats = throughput.run_input_only(cfg, loop.load_charset(cfg))
    print(f"input only: {stats.describe()}")
    return
  logging.info("Effective flags written to %s", cli.write_flags(cfg.workdir))
  results = loop.train_and_evaluate(cfg, after_step=_kill_switch())
  print(f"final eval: {loop.format_eval(results)}")


if __name__ == "__main__":
  app.run(main)
