"""Train a CTC recognizer.

  python -m ctc_trainer.train --flagfile=configs/demo_ocr.cfg --workdir=runs/demo

Flags are defined in ctc_trainer/config.py (`--helpfull` lists them). The run resumes
automatically from the latest checkpoint in --workdir.
"""

from absl import app, flags, logging

from ctc_trainer import cli, config, loop
from ctc_trainer.data import throughput


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
  results = loop.train_and_evaluate(cfg)
  print(f"final eval: {loop.format_eval(results)}")


if __name__ == "__main__":
  app.run(main)
