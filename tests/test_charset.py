import pytest
import tensorflow as tf

from ctc_trainer.charset import BLANK_ID, Charset
from ctc_trainer.errors import CharsetError


def test_file_roundtrip_keeps_space_and_order(tmp_path):
  path = tmp_path / "charset.txt"
  path.write_text("a\n \nb\n\nä\n", encoding="utf-8")
  charset = Charset.from_file(str(path))
  assert charset.symbols == ("a", " ", "b", "ä")
  assert charset.num_classes == 5
  charset.save(str(tmp_path / "out.txt"))
  assert Charset.from_file(str(tmp_path / "out.txt")).symbols == charset.symbols


def test_bad_files_name_the_line(tmp_path):
  path = tmp_path / "charset.txt"
  path.write_text("a\nbc\n", encoding="utf-8")
  with pytest.raises(CharsetError, match=r"charset.txt:2"):
    Charset.from_file(str(path))
  path.write_text("a\nb\na\n", encoding="utf-8")
  with pytest.raises(CharsetError, match="duplicate"):
    Charset.from_file(str(path))


def test_blank_is_zero_and_encode_decode_roundtrip():
  charset = Charset.from_texts(["hello world", "ab"])
  assert BLANK_ID == 0
  assert charset.encode_py("a") == [1 + charset.symbols.index("a")]
  texts = tf.constant(["hello", "", "wab d", "héllo"])
  ids = charset.encode(texts)
  assert ids[3].numpy().tolist().count(-1) == 1  # é is unknown
  decoded = charset.decode(ids[:3]).numpy().tolist()
  assert decoded == [b"hello", b"", b"wab d"]
  assert charset.unknown_chars("héllo") == {"é"}


def test_decode_drops_blank_and_padding():
  charset = Charset(["x", "y"])
  ids = tf.ragged.constant([[0, 1, 0, 2, -1], []], dtype=tf.int32)
  assert charset.decode(ids).numpy().tolist() == [b"xy", b""]
