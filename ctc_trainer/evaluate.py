"""Evaluate a trained run's checkpoint on its eval set (or another one).

  python -m ctc_trainer.evaluate --workdir=runs/demo [--checkpoint=best] [--eval_data=...]

The run's own WORKDIR/flags.cfg supplies every setting; flags given here override it.
Prints CER, WER and sequence accuracy.
"""

import json

from absl import app, flags

from ctc_trainer import cli, config, loop
from ctc_trainer.errors import ConfigError


@cli.exit_on_user_error
def main(argv):
  if not flags.FLAGS.workdir:
    raise ConfigError("--workdir is required")
  cli.apply_workdir_flags()
  cfg = config.from_flags(need_train=False)
  results = loop.evaluate_checkpoint(cfg, flags.FLAGS.checkpoint)
  if flags.FLAGS.json:
    print(json.dumps(results, sort_keys=True))
  else:
    print(f"step {results['step']}: {loop.format_eval(results)}")


if __name__ == "__main__":
  app.run(main)
