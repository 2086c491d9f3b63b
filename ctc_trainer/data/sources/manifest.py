"""Manifest sources: tsv ('path<TAB>label' lines) and csv (columns by name or index)."""

import csv
import os
from typing import Iterator, List, Optional

from ctc_trainer.data.sources.base import (Sample, checked, open_text, read_lines,
                                           resolve, utf8_errors)
from ctc_trainer.errors import DataError


def load_tsv(cfg, split, location, charset):
  return checked(read_tsv(location), cfg, charset, location)


def load_csv(cfg, split, location, charset):
  return checked(read_csv(location, cfg.csv_path_column, cfg.csv_label_column,
                          cfg.csv_header), cfg, charset, location)


def read_tsv(manifest: str) -> Iterator[Sample]:
  """'path<TAB>label' lines (UTF-8). Empty lines are ignored; labels may hold spaces."""
  base = os.path.dirname(os.path.abspath(manifest))
  for lineno, line in read_lines(manifest):
    line = line.rstrip("\r\n")
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) != 2:
      raise DataError(f"{manifest}:{lineno}: expected 2 tab-separated columns "
                      f"(path, label), found {len(fields)}: {line!r}")
    yield Sample(resolve(base, fields[0]), fields[1], f"{manifest}:{lineno}")


def read_csv(manifest: str, path_column: str, label_column: str,
             header: bool) -> Iterator[Sample]:
  """A CSV (python csv module); columns are a header name or a 0-based index."""
  base = os.path.dirname(os.path.abspath(manifest))
  with open_text(manifest) as f, utf8_errors(manifest):
    rows = csv.reader(f)
    names = next(rows, None) if header else None
    path_i = _column_index(manifest, path_column, names)
    label_i = _column_index(manifest, label_column, names)
    for row in rows:
      if not row or not any(cell.strip() for cell in row):
        continue
      origin = f"{manifest}:{rows.line_num}"
      if max(path_i, label_i) >= len(row):
        raise DataError(f"{origin}: expected at least {max(path_i, label_i) + 1} "
                        f"columns, found {len(row)}: {row!r}")
      yield Sample(resolve(base, row[path_i]), row[label_i], origin)


def _column_index(manifest: str, column: str, header: Optional[List[str]]) -> int:
  if header is not None and column in header:
    return header.index(column)
  if column.isdigit():
    return int(column)
  known = f"; header columns: {header}" if header is not None else " (no header)"
  raise DataError(f"{manifest}: CSV column {column!r} is neither a 0-based index "
                  f"nor a header name{known}")
