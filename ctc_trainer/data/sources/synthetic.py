"""The synthetic source: demo text lines generated once (data/synthetic.py), read as tsv."""

from ctc_trainer.data.sources.base import checked
from ctc_trainer.data.sources.manifest import read_tsv

# Fixed seeds, apart from --seed: the sets are data, and train and eval differ so the
# eval set is not the training set. (--seed is fixed for a run too: a resumed run
# continues the checkpointed iterator rather than drawing a new order.)
SYNTHETIC_SEEDS = {"train": 1, "eval": 2}


def load(cfg, split, location, charset):
  from ctc_trainer.data import synthetic  # late: synthetic imports Pillow
  size = cfg.synthetic_train_size if split == "train" else cfg.synthetic_eval_size
  manifest = synthetic.ensure_dataset(
      location, size=size, seed=SYNTHETIC_SEEDS[split], alphabet=cfg.synthetic_alphabet,
      min_length=cfg.synthetic_min_length, max_length=cfg.synthetic_max_length)
  return checked(read_tsv(manifest), cfg, charset, location)
