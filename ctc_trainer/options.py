"""Config options spelled once: a dataclass field carries its flag's help and bounds.

    @dataclasses.dataclass(frozen=True)
    class LoopConfig:
      train_steps: int = option(1000, "Total training steps.", minimum=1)

`define_flags(LoopConfig)` then defines `--train_steps` (type from the annotation,
default from the field, help and checks from the metadata), and
`from_flags(LoopConfig, FLAGS)` builds the frozen dataclass from parsed flags. A field
may name another flag (`flag="model"`), and several fields may share one flag (both
configs' `seed`) as long as they declare it alike. Nested dataclass fields (AudioConfig
inside DataConfig) are followed.

Only absl and the standard library here: models/ and config.py both build on it, and
it imports neither.
"""

import dataclasses
import os
import typing
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from absl import flags

_META = "ctc_trainer"
# Flags defined from fields, per FlagValues (by id), by name -> (type, default): what
# write_flags saves into WORKDIR/flags.cfg, and what a second declaration must match.
_DEFINED: Dict[int, Dict[str, tuple]] = {}


def option(default: Any, help: str, *, flag: Optional[str] = None,  # pylint: disable=redefined-builtin
           choices: Optional[Sequence[Any]] = None, minimum: Optional[float] = None,
           below: Optional[float] = None, path: bool = False,
           check: Optional[Tuple[Callable[[Any], bool], str]] = None) -> Any:
  """A dataclass field that is also a command-line flag.

  flag: the flag's name, when not the field's. choices: the allowed values.
  minimum / below: value >= minimum / value < below, checked at parse time with a
  message naming the flag. path: '~' is expanded when read. check: (predicate,
  message) for anything else (the predicate sees the parsed flag value).
  """
  meta = {"help": help, "flag": flag, "choices": tuple(choices) if choices else None,
          "minimum": minimum, "below": below, "path": path, "check": check}
  if isinstance(default, (list, tuple)):
    return dataclasses.field(default=tuple(default), metadata={_META: meta})
  return dataclasses.field(default=default, metadata={_META: meta})


def flag_name(field: dataclasses.Field) -> str:
  return field.metadata[_META]["flag"] or field.name


def options_of(cls) -> list:
  """The option fields of a dataclass (nested dataclasses not expanded)."""
  return [f for f in dataclasses.fields(cls) if _META in f.metadata]


def define_flags(cls, flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines a flag for every option field of `cls` and of its nested dataclasses.

  A flag already defined from another field is left as it is when the two declare it
  alike (same type and default), and is an error otherwise: one flag, one meaning.
  """
  hints = typing.get_type_hints(cls)
  for field in dataclasses.fields(cls):
    kind = hints[field.name]
    if dataclasses.is_dataclass(kind):
      define_flags(kind, flag_values)
      continue
    if _META not in field.metadata:
      continue
    name, meta = flag_name(field), field.metadata[_META]
    spec = (kind, field.default)
    defined = _DEFINED.setdefault(id(flag_values), {})
    if name in defined:
      if defined[name] != spec:
        raise ValueError(f"flag --{name} is declared twice with different types or "
                         f"defaults: {defined[name]} and {spec}")
      continue
    _define(name, kind, field.default, meta, flag_values)
    defined[name] = spec


def from_flags(cls, flag_values: flags.FlagValues = flags.FLAGS, **overrides):
  """Builds `cls` from parsed flags; `overrides` replace fields by name."""
  hints = typing.get_type_hints(cls)
  values = {}
  for field in dataclasses.fields(cls):
    if field.name in overrides:
      values[field.name] = overrides[field.name]
    elif dataclasses.is_dataclass(hints[field.name]):
      values[field.name] = from_flags(hints[field.name], flag_values)
    elif _META in field.metadata:
      values[field.name] = _read(field, hints[field.name], flag_values)
  return cls(**values)


def defined_flags(flag_values: flags.FlagValues = flags.FLAGS) -> Sequence[str]:
  """Names of every flag defined from a field in flag_values, in definition order."""
  return list(_DEFINED.get(id(flag_values), {}))


def _define(name: str, kind, default, meta: dict, fl: flags.FlagValues) -> None:
  text = meta["help"]
  if meta["choices"]:
    # Enum flags hold strings; ints (image_channels) are converted back when read.
    flags.DEFINE_enum(name, str(default), [str(c) for c in meta["choices"]], text,
                      flag_values=fl)
  elif kind is bool:
    flags.DEFINE_bool(name, default, text, flag_values=fl)
  elif kind is int:
    flags.DEFINE_integer(name, default, text, flag_values=fl)
  elif kind is float:
    flags.DEFINE_float(name, default, text, flag_values=fl)
  elif kind is str:
    flags.DEFINE_string(name, default, text, flag_values=fl)
  elif typing.get_origin(kind) is tuple:
    flags.DEFINE_list(name, [str(v) for v in default], text, flag_values=fl)
    element = typing.get_args(kind)[0]
    flags.register_validator(
        name, lambda v: all(_parses(s, element) for s in v),
        message=f"--{name} must be a comma-separated list of {element.__name__}s",
        flag_values=fl)
  else:
    raise TypeError(f"option --{name}: unsupported type {kind}")
  low, below = meta["minimum"], meta["below"]
  if low is not None:
    relation = f"> {low - 1}" if kind is int and low == 1 else f">= {low}"
    flags.register_validator(name, lambda v: v is not None and v >= low,
                             message=f"--{name} must be {relation}", flag_values=fl)
  if below is not None:
    flags.register_validator(name, lambda v: v is not None and v < below,
                             message=f"--{name} must be < {below}", flag_values=fl)
  if meta["check"]:
    predicate, message = meta["check"]
    flags.register_validator(name, predicate, message=message, flag_values=fl)


def _read(field: dataclasses.Field, kind, fl: flags.FlagValues):
  meta = field.metadata[_META]
  value = fl[flag_name(field)].value
  if typing.get_origin(kind) is tuple:
    element = typing.get_args(kind)[0]
    return tuple(element(s) for s in value)
  if meta["choices"] and kind is not str:
    return kind(value)
  if meta["path"]:
    return os.path.expanduser(value) if value else ""
  return value


def _parses(text: str, kind) -> bool:
  try:
    kind(text)
  except ValueError:
    return False
  return True
