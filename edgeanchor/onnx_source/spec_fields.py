"""Reading a head spec file, and the field checks: one line naming the field, the value and the fix.

Used by :mod:`.spec` and :mod:`.presets`; no torch. A spec file is read with the data.yaml reader's strict
``yaml.SafeLoader`` (aliases and deep nesting refused) or :func:`json.loads`, at most :data:`MAX_SPEC_BYTES`.
"""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path

from ..datasets.text import parse_decimal, read_text
from ..errors import EdgeAnchorError, first_line
from ..limits import MAX_IMAGE_SIDE, is_int

MAX_SPEC_BYTES = 1 << 20  # a spec is a few hundred bytes; a level list of 16 x 1,000 anchors fits with room
SPEC_SUFFIXES = (".yaml", ".yml", ".json")


def read_spec_file(path: Path) -> dict:
    """The mapping a .yaml/.yml/.json head spec file holds (JSON by the suffix, YAML otherwise).

    Raises:
        EdgeAnchorError: missing, not a regular file, over :data:`MAX_SPEC_BYTES`, not UTF-8, malformed,
            a YAML alias or deep nesting, or not a mapping.
    """
    try:
        status = path.stat()
    except FileNotFoundError:
        raise EdgeAnchorError(f"the head spec {path} does not exist; check the path") from None
    except OSError as exc:
        raise EdgeAnchorError(f"cannot read the head spec {path} ({exc.strerror}); check the file") from None
    if stat.S_ISDIR(status.st_mode):
        raise EdgeAnchorError(f"the head spec {path} is a folder; give a .yaml/.yml/.json file")
    if not stat.S_ISREG(status.st_mode):  # a device or a pipe: its size says nothing of what a read returns
        raise EdgeAnchorError(f"the head spec {path} is not a regular file; give a .yaml/.yml/.json file")
    if status.st_size > MAX_SPEC_BYTES:
        raise EdgeAnchorError(f"the head spec {path} is {status.st_size:,} bytes, more than the {MAX_SPEC_BYTES:,} "
                              "a spec may have; give the spec itself (a few hundred bytes), not a data file")
    text = read_text(path, "head spec")
    if path.suffix.lower() == ".json":
        doc = _parse_json(text, path)
    else:
        doc = _parse_yaml(text, path)
    if not isinstance(doc, dict):
        raise EdgeAnchorError(f"the head spec {path} holds {type(doc).__name__}, not a mapping of keys"
                              "; see docs/onnx-head-spec.md")
    return doc


def _parse_json(text: str, path: Path):
    def refuse(name):
        raise ValueError(f"{name} is not a number a spec may hold")

    def unique(pairs):  # json keeps the last of a repeated key; a spec that says two things is refused
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {key!r} is given twice in one object; keep one")
            seen.add(key)
        return dict(pairs)

    try:
        return json.loads(text, parse_constant=refuse, object_pairs_hook=unique)
    except RecursionError:
        raise EdgeAnchorError(f"the head spec {path} nests too deeply; a spec needs four levels") from None
    except ValueError as exc:
        raise EdgeAnchorError(f"the head spec {path} is not valid JSON ({first_line(exc)}); fix the file") from None


def _parse_yaml(text: str, path: Path):
    import yaml

    # The data.yaml reader's loader: yaml.safe_load's loader refusing aliases and deep nesting.
    from ..datasets.yolo import MAX_YAML_DEPTH, _Refused, _yaml_loader

    class SpecLoader(_yaml_loader()):  # type: ignore[misc]
        """Also refuses a key given twice in one mapping (YAML keeps the last; `preset` twice is not a choice)."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, (str, int, float, bool)) or key is None:
                    continue  # an unhashable or odd key: SafeLoader's own check (or the field checks) refuse it
                if key in seen:
                    raise _Refused(f"the key {key!r} is given twice in one mapping; keep one",
                                   key_node.start_mark.line + 1)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    try:
        return yaml.load(text, Loader=SpecLoader)  # a SafeLoader subclass
    except _Refused as exc:
        what = exc.what.replace("a data.yaml", "a head spec")
        if what.startswith("the YAML nests deeper"):
            what = f"the YAML nests deeper than {MAX_YAML_DEPTH} levels; a head spec needs four"
        raise EdgeAnchorError(f"{path}:{exc.line}: {what}") from None
    except yaml.YAMLError as exc:
        # PyYAML's first line is its context ("while scanning for the next token"); the problem and its line
        # ("found character '\t' that cannot start any token", line 3) are what the user can fix
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        why = str(problem)[:120] if problem else first_line(exc, 120)
        raise EdgeAnchorError(f"the head spec {where} is not valid YAML ({why}); fix the file") from None


_REQUIRED = object()


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def bad(source: str, path: str, value, expected: str) -> EdgeAnchorError:
    return EdgeAnchorError(f"{source}: {path} is {_shown(value)}, but it must be {expected}; fix it in the spec "
                           "(docs/onnx-head-spec.md)")


def check_keys(obj, known: tuple[str, ...], where: str, source: str) -> None:
    if not isinstance(obj, dict):
        raise bad(source, where, obj, f"a mapping (keys: {', '.join(known)})")
    unknown = [k for k in obj if k not in known]
    if unknown:
        raise EdgeAnchorError(f"{source}: unknown key {unknown[0]!r} in {where}; the known keys are "
                              f"{', '.join(known)}")


def section(doc: dict, key: str, known: tuple[str, ...], source: str, required: bool = True) -> dict:
    if key not in doc:
        if required:
            raise EdgeAnchorError(f"{source}: {key} is missing; give it, or start from a preset "
                                  "(preset: NAME; docs/onnx-head-spec.md)")
        return {}
    check_keys(doc[key], known, key, source)
    return doc[key]


def get_field(obj: dict, key: str, path: str, source: str, default=_REQUIRED):
    if key in obj:
        return obj[key]
    if default is _REQUIRED:
        raise EdgeAnchorError(f"{source}: {path} is missing; give it (docs/onnx-head-spec.md)")
    return default


def number(value, path: str, source: str, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
        try:
            value = parse_decimal(value.strip())
        except ValueError:
            pass
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > low if low_open else value >= low) and value <= high)
    if not ok:
        raise bad(source, path, value, f"a number {'above' if low_open else 'from'} {low:g} "
                                        f"{'and at most' if low_open else 'to'} {high:g}")
    return float(value)


def integer(value, path: str, source: str, low: int, high: int) -> int:
    if not (is_int(value) and low <= value <= high):
        raise bad(source, path, value, f"an integer from {low} to {high:,}")
    return int(value)


def choice(value, path: str, source: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise bad(source, path, value, f"one of {', '.join(repr(c) for c in choices)}")
    return value


def boolean(value, path: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise bad(source, path, value, "true or false")
    return value


def graph_name(value, path: str, source: str, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not (isinstance(value, str) and value):
        raise bad(source, path, value, "a graph name (a non-empty string)" + (" or null" if optional else ""))
    return value


def numbers(value, path: str, source: str, count: int, low: float, high: float, *,
             low_open: bool = False) -> tuple[float, ...]:
    if not (isinstance(value, (list, tuple)) and len(value) == count):
        raise bad(source, path, value, f"a list of {count} numbers")
    return tuple(number(v, f"{path}[{i}]", source, low, high, low_open=low_open) for i, v in enumerate(value))


def int_pair(value, path: str, source: str, low: int, high: int) -> tuple[int, int]:
    """An int pair (y, x); a single int means the same on both axes."""
    items = [value, value] if is_int(value) else value
    if not (isinstance(items, (list, tuple)) and len(items) == 2 and all(is_int(v) and low <= v <= high
                                                                          for v in items)):
        raise bad(source, path, value, f"an integer or a pair [y, x] of integers from {low} to {high:,}")
    return int(items[0]), int(items[1])


def is_image_size(value) -> bool:
    """[height, width] in pixels, each from 1 to :data:`MAX_IMAGE_SIDE`."""
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(is_int(v) and 1 <= v <= MAX_IMAGE_SIDE for v in value))


def image_size_pair(value, path: str, source: str) -> tuple[int, int]:
    if not is_image_size(value):
        raise bad(source, path, value, f"[height, width] in pixels, each from 1 to {MAX_IMAGE_SIDE:,}")
    return int(value[0]), int(value[1])


def feature_size(stride: tuple[int, int], given: tuple[int, int] | None, size: tuple[int, int], path: str,
                 source: str) -> tuple[int, int]:
    """A level's feature size at input ``size``: ``given``, or ceil(size / stride); refuse one that does not fit."""
    expected = (math.ceil(size[0] / stride[0]), math.ceil(size[1] / stride[1]))
    if given is not None and given != expected:
        raise EdgeAnchorError(
            f"{source}: {path}.feature_size is {list(given)}, but stride {list(stride)} on a "
            f"{size[0]}x{size[1]} input gives {list(expected)} (ceil(size / stride)); fix the stride or the feature "
            "size, or the input size (preprocess.image_size)")
    return expected
