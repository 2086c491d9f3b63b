"""Evaluate a trained run's checkpoint on its eval set (or another one).

  python -m ctc_trainer.evaluate --workdir=runs/demo [--checkpoint=best] [--eval_data=...]
      [--report=DIR [--report_worst=N]]

The run's own WORKDIR/flags.cfg supplies every setting; flags given here override it.
Prints CER, WER and sequence accuracy. --report also writes, from the same pass, a
per-sample TSV, character confusion tables and an HTML page of the worst lines
(ctc_trainer/report.py).
"""

import json

from absl import app, flags

from ctc_trainer import cli, config, loop, report
from ctc_trainer.errors import ConfigError

flags.DEFINE_string("report", None,
                    "Also write an evaluation report into this folder (created if "
                    "missing): samples.tsv, confusions.tsv, characters.tsv and "
                    "report.html with the worst lines' inputs.")
flags.DEFINE_integer("report_worst", 50, "How many of the worst lines report.html shows.",
                     lower_bound=0)


@cli.exit_on_user_error
def main(argv):
  if not flags.FLAGS.workdir:
    raise ConfigError("--workdir is required")
  cli.apply_workdir_flags()
  cfg = config.from_flags(need_train=False)
  page = None
  if flags.FLAGS.report:
    results, page = report.evaluate_with_report(
        cfg, flags.FLAGS.checkpoint,
        report.ReportConfig(flags.FLAGS.report, flags.FLAGS.report_worst))
  else:
    results = loop.evaluate_checkpoint(cfg, flags.FLAGS.checkpoint)
  if flags.FLAGS.json:
    print(json.dumps(results, sort_keys=True))
  else:
    print(f"step {results['step']}: {loop.format_eval(results)}")
    if page:
      print(f"report: {page}")


if __name__ == "__main__":
  app.run(main)
