"""The charset: symbols <-> ids. Blank is id 0; symbol i of the file is id i + 1.

File format: UTF-8, one symbol per line, in id order. The line ending is stripped and
nothing else, so a line holding a single space is the space character. Empty lines are
ignored. A symbol is one Unicode code point; duplicates are an error.
"""

import os
import unicodedata
from typing import Iterable, Sequence, Set

import tensorflow as tf

from ctc_trainer.errors import CharsetError

BLANK_ID = 0


def normalize_text(text: str, form: str) -> str:
  """A label in Unicode normalization `form` (--text_normalization: NFC, NFKC, NFD,
  NFKD, or 'none' for as written)."""
  return text if form == "none" else unicodedata.normalize(form, text)


class Charset:
  """An ordered set of symbols with tf.lookup based encoding and decoding."""

  def __init__(self, symbols: Sequence[str]):
    symbols = tuple(symbols)
    for s in symbols:
      if len(s) != 1:
        raise CharsetError(f"charset symbol {s!r} is not a single character")
    if len(set(symbols)) != len(symbols):
      dup = sorted({s for s in symbols if symbols.count(s) > 1})
      raise CharsetError(f"charset has duplicate symbols: {dup}")
    if not symbols:
      raise CharsetError("charset is empty")
    self.symbols = symbols
    self._index = {s: i + 1 for i, s in enumerate(symbols)}
    self._encode_table = None
    self._decode_table = None

  # --- construction and storage -------------------------------------------------

  @classmethod
  def from_file(cls, path: str) -> "Charset":
    try:
      with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    except UnicodeDecodeError as e:
      raise CharsetError(f"{path}: not UTF-8 ({e})") from None
    symbols = [s for s in lines if s]
    for lineno, s in enumerate(lines, 1):
      if len(s) > 1:
        raise CharsetError(f"{path}:{lineno}: {s!r} is more than one character")
    return cls(symbols)

  @classmethod
  def from_texts(cls, texts: Iterable[str]) -> "Charset":
    """All characters of the texts, sorted by code point."""
    chars: Set[str] = set()
    for t in texts:
      chars.update(t)
    if not chars:
      raise CharsetError("cannot build a charset: all labels are empty")
    return cls(sorted(chars))

  def save(self, path: str) -> None:
    # A temporary name per process: the workers of a multi-worker run share WORKDIR.
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
      f.write("".join(s + "\n" for s in self.symbols))
    os.replace(tmp, path)

  # --- sizes and host-side helpers ------------------------------------------------

  @property
  def size(self) -> int:
    """Number of symbols, without the blank."""
    return len(self.symbols)

  @property
  def num_classes(self) -> int:
    """Logit width: symbols plus the blank."""
    return len(self.symbols) + 1

  def unknown_chars(self, text: str) -> Set[str]:
    return {c for c in text if c not in self._index}

  def encode_py(self, text: str) -> list:
    return [self._index[c] for c in text]

  def decode_py(self, ids: Iterable[int]) -> str:
    return "".join(self.symbols[i - 1] for i in ids if i > 0)

  # --- graph-side encoding and decoding ----------------------------------------

  def tables(self):
    """(encode, decode) tf.lookup tables; a SavedModel must track them to keep them."""
    if self._encode_table is None:
      # Created eagerly even when first asked for inside a tf.function or a tf.data
      # map, so that every later trace can capture the same tables.
      with tf.init_scope():
        self._make_tables()
    return self._encode_table, self._decode_table

  def _make_tables(self):
    keys = tf.constant(list(self.symbols))
    ids = tf.range(1, self.num_classes, dtype=tf.int32)
    self._encode_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, ids), default_value=-1)
    self._decode_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(ids, keys), default_value="")

  def encode(self, texts: tf.Tensor) -> tf.RaggedTensor:
    """string [B] -> int32 ragged [B, (L)]. Unknown characters map to -1."""
    encode_table, _ = self.tables()
    chars = tf.strings.unicode_split(texts, "UTF-8")
    return tf.ragged.map_flat_values(encode_table.lookup, chars)

  def decode(self, ids: tf.RaggedTensor) -> tf.Tensor:
    """int32 ragged [B, (L)] -> string [B]. Ids <= 0 (blank, padding) are dropped."""
    _, decode_table = self.tables()
    # On the flat values and their row ids: the ragged mask and join build a graph
    # many times this size, in every trace that decodes.
    keep = ids.values > 0
    chars = decode_table.lookup(tf.boolean_mask(ids.values, keep))
    rows = tf.boolean_mask(ids.value_rowids(), keep)
    return tf.strings.unsorted_segment_join(chars, rows, ids.nrows())
