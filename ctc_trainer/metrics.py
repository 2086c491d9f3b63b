"""Recognition metrics as streaming sums: computed per batch, added up over the whole
eval set, divided once at the end (so batch size and padding never weight them).

CER = character edits / reference characters, WER = word edits / reference words
(words split on whitespace), sequence accuracy = exact matches / sequences. With no
reference characters (or words) at all, the ratio is the raw edit count: 0 when the
predictions are empty too.
"""

from typing import Dict, Mapping

import tensorflow as tf

SUM_KEYS = ("char_edits", "ref_chars", "word_edits", "ref_words", "seq_correct",
            "num_seqs")


def _edits(hyp: tf.RaggedTensor, ref: tf.RaggedTensor) -> tf.Tensor:
  """Levenshtein distance per row of two ragged string tensors [B, (N)] -> float [B]."""
  return tf.edit_distance(hyp.to_sparse(), ref.to_sparse(), normalize=False)


def sample_char_counts(predictions: tf.Tensor,
                       references: tf.Tensor) -> Dict[str, tf.Tensor]:
  """predictions, references: string [B] -> {"char_edits", "ref_chars"}: float32 [B],
  each sample's character edits and reference characters (batch_sums adds them up)."""
  hyp_chars = tf.strings.unicode_split(predictions, "UTF-8")
  ref_chars = tf.strings.unicode_split(references, "UTF-8")
  return {"char_edits": _edits(hyp_chars, ref_chars),
          "ref_chars": tf.cast(ref_chars.row_lengths(), tf.float32)}


def batch_sums(predictions: tf.Tensor, references: tf.Tensor) -> Dict[str, tf.Tensor]:
  """predictions, references: string [B] -> dict of float32 scalar sums (SUM_KEYS)."""
  chars = sample_char_counts(predictions, references)
  hyp_words = tf.strings.split(predictions)
  ref_words = tf.strings.split(references)
  f32 = lambda x: tf.cast(x, tf.float32)
  return {
      "char_edits": tf.reduce_sum(chars["char_edits"]),
      "ref_chars": tf.reduce_sum(chars["ref_chars"]),
      "word_edits": tf.reduce_sum(_edits(hyp_words, ref_words)),
      "ref_words": f32(tf.reduce_sum(ref_words.row_lengths())),
      "seq_correct": tf.reduce_sum(f32(tf.equal(predictions, references))),
      "num_seqs": f32(tf.size(references)),
  }


def add_sums(total: Mapping[str, tf.Tensor], new: Mapping[str, tf.Tensor]):
  return {k: total[k] + new[k] for k in total} if total else dict(new)


def _ratio(num: float, den: float) -> float:
  return num / den if den > 0 else num


def results(sums: Mapping[str, float]) -> Dict[str, float]:
  """Final metrics from accumulated sums (python floats or scalar tensors)."""
  s = {k: float(v) for k, v in sums.items()}
  return {
      "cer": _ratio(s["char_edits"], s["ref_chars"]),
      "wer": _ratio(s["word_edits"], s["ref_words"]),
      "seq_accuracy": _ratio(s["seq_correct"], s["num_seqs"]),
      "num_seqs": s["num_seqs"],
  }
