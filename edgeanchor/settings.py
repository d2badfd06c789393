"""One definition per setting: a command's settings are one frozen dataclass.

Each field is a setting: its name is the Python API's keyword, and its metadata (:func:`setting`) holds
the command-line flag, the help text, how the flag parses, and the check of its value. From the one
dataclass come:

- the command's argparse flags (:func:`add_arguments`), so the CLI defines no flag of its own;
- the values the CLI passes to the API (:func:`from_args`);
- the API function's signature and parameter docs (:func:`api_signature`), so ``help()`` and
  ``inspect.signature`` show every setting with its default;
- one validation (:func:`check_fields`), run once per call, before any model or data is touched: each
  value's type against the field's annotation (:func:`check_type`), then its choices and its check.

The public API functions that take explicit parameters hold to their annotations the same way
(:func:`typechecked`): a value of another type is one line naming the parameter and the type expected.

A new setting of a command is one field. Nothing here parses flags at import time or imports argparse for
the API; :mod:`edgeanchor.cli` calls :func:`add_arguments` and :func:`from_args`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
import os
import sys
import types
import typing
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import EdgeAnchorError


@dataclass(frozen=True)
class Flag:
    """How a setting appears on the command line, and what values it accepts.

    Attributes:
        help: the help text (also the API's parameter doc).
        flags: the option strings (default ``--name-with-hyphens``); empty for an API-only setting.
        type: argparse's conversion (default: the default value's type for int/float/str).
        choices: the accepted values (checked for the API too).
        nargs, metavar, action: as argparse's.
        group: the argparse group title the flag is listed under.
        exclusive: flags with the same value here form a mutually exclusive group.
        check: a function of the value returning an error message (with the marked name) or None.
        required: the flag must be given (for an ``exclusive`` group: one of the group's flags must be given).
        positional: a positional argument named by the field (``metavar`` is how usage shows it).
        hidden: left out of ``--help`` (a setting for tests and experts).
    """

    help: str
    flags: tuple[str, ...] | None = None
    type: Callable[[str], Any] | None = None
    choices: Sequence[Any] | None = None
    nargs: int | str | None = None
    metavar: str | tuple[str, ...] | None = None
    action: str | None = None
    group: str | None = None
    exclusive: str | None = None
    check: Callable[[Any], str | None] | None = None
    required: bool = False
    positional: bool = False
    hidden: bool = False


def setting(default: Any = None, help: str = "", **flag: Any) -> Any:
    """A dataclass field that is a setting (see :class:`Flag` for the keywords)."""
    return field(default=default, metadata={"setting": Flag(help=help, **flag)})


def flag_of(f: dataclasses.Field) -> Flag:
    meta = f.metadata.get("setting")
    return meta if isinstance(meta, Flag) else Flag(help="", flags=())


def option_strings(f: dataclasses.Field) -> tuple[str, ...]:
    """The field's flags: given ones, else ``--name-with-hyphens``; none for a positional argument."""
    spec = flag_of(f)
    if spec.positional:
        return ()
    return spec.flags if spec.flags is not None else ("--" + f.name.replace("_", "-"),)


def add_arguments(parser: Any, cls: type, *, exclude: Sequence[str] = ()) -> None:
    """Add one argparse flag (or positional argument) per field of the settings dataclass ``cls``, in field order."""
    import argparse

    groups: dict[str, Any] = {}
    exclusive: dict[str, Any] = {}
    required_groups = {flag_of(f).exclusive for f in dataclasses.fields(cls) if flag_of(f).required}
    for f in dataclasses.fields(cls):
        spec = flag_of(f)
        names = option_strings(f)
        if f.name in exclude or not (names or spec.positional):
            continue
        target = parser
        if spec.group:
            if spec.group not in groups:
                groups[spec.group] = parser.add_argument_group(spec.group)
            target = groups[spec.group]
        if spec.exclusive:
            if spec.exclusive not in exclusive:
                exclusive[spec.exclusive] = target.add_mutually_exclusive_group(
                    required=spec.exclusive in required_groups)
            target = exclusive[spec.exclusive]
        help_text = argparse.SUPPRESS if spec.hidden else spec.help or None
        kwargs: dict[str, Any] = {"default": f.default, "help": help_text}
        if not spec.positional:
            kwargs["dest"] = f.name
            if spec.required and not spec.exclusive:
                kwargs["required"] = True
        if spec.action:
            kwargs["action"] = spec.action
        else:
            kwargs["type"] = spec.type or _default_type(f.default)
            for key in ("choices", "nargs", "metavar"):
                if getattr(spec, key) is not None:
                    kwargs[key] = getattr(spec, key)
        target.add_argument(*(names or (f.name,)),
                            **{k: v for k, v in kwargs.items() if v is not None or k == "default"})


def _default_type(default: Any) -> Callable[[str], Any] | None:
    if isinstance(default, bool) or default is None:
        return None
    if isinstance(default, (int, float)):
        return type(default)
    return None


def from_args(cls: type, args: Any, **given: Any) -> dict[str, Any]:
    """The keyword arguments of ``cls``'s API function from an argparse namespace (plus ``given``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(given)
    return values


def check_fields(obj: Any) -> None:
    """Each field's type (its annotation, :func:`check_type`), then its own check (choices, and the
    :class:`Flag`'s ``check``), in field order.

    Raises:
        EdgeAnchorError: the first failing setting, named as the API spells it (marked: `name`).
    """
    namespace = vars(sys.modules[type(obj).__module__])
    for f in dataclasses.fields(obj):
        check_type(f.name, getattr(obj, f.name), f.type, namespace)
    for f in dataclasses.fields(obj):
        spec = flag_of(f)
        value = getattr(obj, f.name)
        if spec.choices is not None and value is not None and value not in spec.choices:
            raise EdgeAnchorError(f"unknown `{f.name}` {value!r}; choose one of {', '.join(map(str, spec.choices))}")
        if spec.check is not None:
            message = spec.check(value)
            if message:
                raise EdgeAnchorError(message)


def api_signature(cls: type, *, positional: Sequence[str] = (), returns: Any = inspect.Signature.empty
                  ) -> inspect.Signature:
    """The API function's signature: ``positional`` fields first, every other field keyword-only."""
    params = []
    for f in dataclasses.fields(cls):
        kind = (inspect.Parameter.POSITIONAL_OR_KEYWORD if f.name in positional
                else inspect.Parameter.KEYWORD_ONLY)
        params.append(inspect.Parameter(f.name, kind, default=f.default, annotation=f.type))
    params.sort(key=lambda p: p.kind)
    return inspect.Signature(params, return_annotation=returns)


def args_doc(cls: type, indent: str = "        ") -> str:
    """The fields' help texts as a docstring's ``Args:`` entries."""
    import textwrap

    lines = []
    for f in dataclasses.fields(cls):
        text = f"{f.name}: {flag_of(f).help}" if flag_of(f).help else f.name
        lines += textwrap.wrap(text, 110, initial_indent=indent, subsequent_indent=indent + "    ")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- checks


def at_least(n: int | float, name: str, note: str = "") -> Callable[[Any], str | None]:
    """A check: the value is a number >= ``n``."""
    def check(value: Any) -> str | None:
        if not _number(value) or value < n:
            return f"`{name}` must be >= {n}{note} (got {value!r})"
        return None
    return check


def positive(name: str, *, optional: bool = False) -> Callable[[Any], str | None]:
    """A check: the value is a finite number > 0 (or None where ``optional``)."""
    def check(value: Any) -> str | None:
        if optional and value is None:
            return None
        if not (_number(value) and value > 0):
            return f"`{name}` must be a positive number (got {value!r})"
        return None
    return check


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------------------- types


def typechecked(func: Callable) -> Callable:
    """A public API function whose arguments are checked against its annotations before its body runs.

    The annotations are what the API documents each parameter to take; this makes them its check as well,
    so ``ea.bench(iters="5")`` is one line, "`iters` must be an int (got '5', a str)", not a traceback from
    deep inside. Arguments Python itself cannot bind (an unknown keyword, one too many) are left to Python's
    own TypeError.
    """
    signature: inspect.Signature | None = None

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        nonlocal signature
        signature = signature or inspect.signature(func)
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return func(*args, **kwargs)  # Python's own message
        for name, value in bound.arguments.items():
            if signature.parameters[name].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                       inspect.Parameter.VAR_KEYWORD):
                check_type(name, value, signature.parameters[name].annotation, func.__globals__)
        return func(*args, **kwargs)

    checked.__edgeanchor_typechecked__ = True  # type: ignore[attr-defined]  # tests/test_api_misuse.py walks these
    return checked


def check_type(name: str, value: Any, annotation: Any, namespace: dict[str, Any]) -> None:
    """Refuse ``value`` unless it is of the type ``annotation`` (a string, as ``from __future__ import
    annotations`` leaves it, read in ``namespace``) says.

    The rules: ``Any`` takes everything; an int is a float, but a bool is neither an int nor a float (True is
    not a count); any integral number (numpy's included) is an int; ``Sequence[int]`` and ``Iterable[int]``
    check the elements of a collection (an iterator is left to the function); a generic class such as
    ``os.PathLike[str]`` checks its class. An annotation this does not understand refuses nothing.

    Raises:
        EdgeAnchorError: "`name` must be <the types> (got <the value>)".
    """
    if annotation is inspect.Parameter.empty:
        return
    expected = _resolve(annotation, namespace)
    if not _matches(value, expected):
        wanted = _describe(expected)
        hint = (f"; build one with ea.load({os.fspath(value)!r})"
                if isinstance(value, (str, os.PathLike)) and wanted == "a Detector" else "")
        raise EdgeAnchorError(f"`{name}` must be {wanted} (got {shown(value)}{_odd_element(value, expected)}){hint}")


def shown(value: Any) -> str:
    """A value as an error message shows it: its repr (strings quoted), on one line and short, with its type."""
    if value is None:
        return "None"
    scalar = type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0  # np.True_, np.float32(1)
    if scalar or isinstance(value, (str, bytes, numbers.Number, os.PathLike, list, tuple, set, frozenset)):
        text = " ".join(repr(value).split())
        text = text if len(text) <= 60 else text[:57] + "..."
        return f"{text}, {_article(type(value).__name__)}"
    return _article(type(value).__name__)


def _odd_element(value: Any, tp: Any) -> str:
    """For a collection of the right kind holding a wrong element: ": <that element>, <its type> in it"."""
    for member in _members(tp):
        origin, args = typing.get_origin(member), typing.get_args(member)
        if (origin is not None and isinstance(origin, type) and args and isinstance(value, origin)
                and isinstance(value, Collection) and not isinstance(value, (str, bytes))):
            odd = next((v for v in value if not _matches(v, args[0])), None)
            if odd is not None:
                return f": {shown(odd)} in it"
    return ""


class _Unloaded:
    """Stands for a class whose module is not imported yet: then no value can be one of its instances."""


def _resolve(annotation: Any, namespace: dict[str, Any]) -> Any:
    if not isinstance(annotation, str):
        return annotation
    names: dict[str, Any] = {"os": os, "Any": Any, "Callable": Callable, "Iterable": Iterable,
                             "Sequence": Sequence, "Literal": typing.Literal}
    names.update(namespace)
    from . import _LAZY  # the public classes (Detector, ExportFolder ...): typing-only imports in the API modules

    for public, module in _LAZY.items():
        if public not in names:
            loaded = sys.modules.get("edgeanchor" + module)
            names[public] = getattr(loaded, public) if loaded else type(public, (_Unloaded,), {})
    try:
        return eval(annotation, names)  # our own annotations, never user input
    except Exception:  # an annotation this cannot read refuses nothing
        return Any


def _members(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _matches(value: Any, tp: Any) -> bool:
    if len(_members(tp)) > 1:
        return any(_matches(value, m) for m in _members(tp))
    if tp is Any or tp is object:
        return True
    if tp is None or tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:  # Literal["auto"]: one of the values, of the same type (True is not 1)
        return any(type(value) is type(v) and value == v for v in typing.get_args(tp))
    if origin is not None and isinstance(origin, type):  # Sequence[int], os.PathLike[str], dict[str, Any]
        if not isinstance(value, origin):
            return False
        args = typing.get_args(tp)
        if issubclass(origin, Iterable) and not issubclass(origin, dict) and args and isinstance(value, Collection):
            return all(_matches(v, args[0]) for v in value)
        return True
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _describe(tp: Any) -> str:
    parts = [_describe_one(m) for m in _members(tp)]
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} or {parts[-1]}"


def _describe_one(tp: Any) -> str:
    if tp is None or tp is type(None):
        return "None"
    if tp is float:
        return "a number"
    if tp is os.PathLike or typing.get_origin(tp) is os.PathLike:
        return "a path (os.PathLike)"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if origin is not None and args:
        of = _describe(args[0]).removeprefix("an ").removeprefix("a ")
        return f"{_article(origin.__name__.lower())} of {of}"
    return _article(getattr(tp, "__name__", str(tp)))


def _article(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
