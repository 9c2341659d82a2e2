"""One strict loader for every config file: a mapping (from JSON or YAML) becomes a typed dataclass.

:func:`from_mapping` checks every value against the dataclass annotations (``int``, ``float``, ``bool``,
``str``, ``X | None``, ``Literal[...]``, ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``dict[K, V]``,
``Counter[K]``, nested dataclasses and ``Any``, which takes plain JSON values), refuses unknown keys (with a
"did you mean"), applies the bounds declared on the fields with :func:`between`, and then runs the
dataclass's own ``__post_init__`` checks. Every problem is one :class:`ConfigError` whose one-line message
names the file, the dotted field path, the value given and what is expected, e.g.::

    run/config.json: field 'perceiver.num_latents': got 1000000000000; expected an integer from 1 to 4096

:func:`read_mapping` reads a JSON or YAML file into a mapping with the same kind of errors (syntax errors and
a top level that is not a mapping name the file). The module imports nothing from flamingo, so every layer,
the model included, can use it.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import functools
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from flamingo.errors import FlamingoError

T = TypeVar("T")

MAX_FILE_BYTES = 16 * 1024 * 1024
"""Config files larger than this are refused before they are parsed."""
MAX_VALUES = 100_000
"""Most values (scalars, lists and mappings) one config may hold; YAML aliases count every time they are used."""
MAX_DEPTH = 64
"""Deepest nesting of free-form (``Any``) values."""
MAX_SEED = 2**32 - 1
"""Largest random seed (what numpy accepts)."""

_NONE = type(None)
_DECIMAL = re.compile(r"-?[0-9]{1,18}")
_FLOAT = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")
_SHOWN_CHARS = 60


class ConfigError(FlamingoError, ValueError):
    """A config value that cannot be used.

    The message is one line naming the file (or the override), the dotted field path, the value given and
    what is expected; ``source`` and ``field`` hold the first two when known (escaped like the message).
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None) -> None:
        super().__init__(one_line(message))
        self.source = None if source is None else one_line(source)
        self.field = None if field is None else one_line(field)


def one_line(text: str) -> str:
    """``text`` with line breaks and other unprintable characters escaped, so that it prints as one line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def between(
    lo: float | None = None,
    hi: float | None = None,
    *,
    above: bool = False,
    hint: str | None = None,
) -> dict[str, Any]:
    """Field metadata bounding every number in the field: ``lo <= x <= hi`` (``lo < x`` with ``above``).

    Use as ``num_latents: int = field(default=64, metadata=between(1, 4096))``. The bounds apply to the value
    itself and to every number inside it (list items, mapping values, free-form values); ``hint`` is added to
    the error message (for example ``"e.g. shots: [0, 4, 8]"``).
    """
    meta: dict[str, Any] = {"min": lo, "max": hi, "above": above}
    if hint:
        meta["hint"] = hint
    return meta


def hint(text: str) -> dict[str, Any]:
    """Field metadata adding ``text`` to the error message of a field without bounds."""
    return {"hint": text}


def from_mapping(
    cls: type[T],
    data: Any,
    source: str,
    *,
    where: str = "",
    origins: Mapping[str, str] | None = None,
    fixed: Mapping[str, Any] | None = None,
    error: type[ConfigError] = ConfigError,
) -> T:
    """Build dataclass ``cls`` from ``data``, checking keys, types and bounds; raises ``error`` (a ConfigError).

    ``source`` names where ``data`` came from (a file path); ``where`` is the dotted path of ``data`` inside
    it. ``origins`` maps dotted paths to another source for the values under them (e.g. ``"train.lr"`` to
    ``"override 'train.lr=3e-4'"``), so that an error names what gave the value. ``fixed`` are constructor
    arguments that do not come from the file.
    """
    return _Loader(source, origins or {}, error).dataclass(cls, data, where, fixed or {})


def read_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The mapping in a JSON (``.json``) or YAML (any other name) file; an empty YAML file is ``{}``.

    Raises FileNotFoundError when the file is missing and ConfigError, naming the file, when it is too large,
    not UTF-8, not valid JSON or YAML, or not a mapping at its top level.
    """
    file = Path(path)
    name = str(path)
    if not file.is_file():
        raise FileNotFoundError(f"{name}: no such {what} file")
    try:
        size = file.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(
                f"{name}: {size} bytes, larger than a {what} file may be ({MAX_FILE_BYTES})", source=name
            )
        text = file.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{name}: not UTF-8 text ({err.reason} at byte {err.start})", source=name) from None
    except OSError as err:
        raise ConfigError(f"{name}: cannot be read ({err.strerror or err})", source=name) from None
    return parse_mapping(text, name, json_only=file.suffix.lower() == ".json", what=what)


def parse_mapping(text: str, source: str, *, json_only: bool = False, what: str = "config") -> dict[str, Any]:
    """The mapping in ``text`` (JSON, or YAML which includes JSON); errors name ``source``."""
    import yaml

    if json_only and not text.strip():
        raise ConfigError(f"{source}: empty file; expected a JSON object of fields", source=source)
    try:
        if json_only:
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
            data = {} if data is None else data
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{source}: not valid JSON (line {err.lineno} column {err.colno}: {err.msg})", source=source
        ) from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a {what} file", source=source) from None
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        raise ConfigError(
            f"{source}: not valid {'JSON' if json_only else 'YAML'} ({err})", source=source
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML ({_yaml_problem(err)})", source=source) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of fields, got {show(data)}", source=source
        )
    return valid_text(data, source) if _SURROGATE_ESCAPE.search(text) else data


_SURROGATE_ESCAPE = re.compile(r"\\(u[dD][89a-fA-F]|U0000[dD][89a-fA-F])")
_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(data: Any, source: str) -> Any:
    """``data`` with every string (keys too) made valid Unicode: a UTF-16 surrogate pair written as two escapes
    (``"\\ud800\\udc00"``, which YAML keeps as two code points) becomes the one character it spells; a lone
    surrogate, which no file can hold as UTF-8, is a ConfigError naming ``source`` and the field.
    """
    done: dict[int, Any] = {}

    def text(item: str, where: str) -> str:
        if not _SURROGATE.search(item):
            return item
        try:
            return item.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        except UnicodeDecodeError:
            problem = (
                f"{show(item)} holds a lone UTF-16 surrogate escape (\\ud800 to \\udfff), which is not a "
                "character; write the character itself"
            )
            field = where or None
            prefix = f"{source}: field '{where}': " if where else f"{source}: "
            raise ConfigError(prefix + problem, source=source, field=field) from None

    def fix(item: Any, where: str, depth: int) -> Any:
        if isinstance(item, str):
            return text(item, where)
        if depth > MAX_DEPTH:
            raise ConfigError(f"{source}: nested too deeply (more than {MAX_DEPTH} levels)", source=source)
        if isinstance(item, list | dict) and id(item) in done:  # a YAML alias: fixed once
            return done[id(item)]
        if isinstance(item, list):
            done[id(item)] = fixed = [fix(v, _join(where, str(i)), depth + 1) for i, v in enumerate(item)]
            return fixed
        if isinstance(item, dict):
            fixed = {}
            for key, value in item.items():
                name = text(key, _join(where, key)) if isinstance(key, str) else key
                fixed[name] = fix(value, _join(where, str(name)), depth + 1)
            done[id(item)] = fixed
            return fixed
        return item

    return fix(data, "", 0)


def _yaml_problem(err: Exception) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is not None:
        return f"line {mark.line + 1} column {mark.column + 1}: {problem}"
    return str(problem)


def show(value: Any) -> str:
    """A short one-line description of a config value, spelt as in JSON/YAML where possible."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > 96:
            return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        if len(value) > _SHOWN_CHARS:
            return f"{value[:_SHOWN_CHARS]!r}... (a string of {len(value)} characters)"
        return f"{value!r} (a string)" if _looks_numeric(value) else repr(value)
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, Mapping):
        return f"a mapping of {len(value)} key{'' if len(value) == 1 else 's'}"
    return f"a {type(value).__name__} value"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text.strip().lower() in ("true", "false", "yes", "no", "on", "off", "null")
    return True


def _number(x: float) -> str:
    if isinstance(x, int):
        return str(x)
    if abs(x) >= 1e7:
        return f"{x:g}"
    return str(int(x)) if x.is_integer() else repr(x)


def bounds_text(meta: Mapping[str, Any]) -> str:
    """The bounds declared with :func:`between`, in words (``"from 1 to 4096"``); empty without bounds."""
    return _range(meta).strip()


def _range(meta: Mapping[str, Any]) -> str:
    lo, hi, above = meta.get("min"), meta.get("max"), meta.get("above", False)
    if lo is not None and hi is not None:
        return (
            f" above {_number(lo)} and at most {_number(hi)}"
            if above
            else f" from {_number(lo)} to {_number(hi)}"
        )
    if lo is not None:
        return f" {'>' if above else '>='} {_number(lo)}"
    if hi is not None:
        return f" <= {_number(hi)}"
    return ""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(kind: Any) -> bool:
    return typing.get_origin(kind) in (typing.Union, types.UnionType)


def _is_sequence_kind(kind: Any) -> bool:
    return kind in (list, tuple) or typing.get_origin(kind) in (list, tuple)


def _is_mapping_kind(kind: Any) -> bool:
    origin = typing.get_origin(kind)
    return (
        kind in (dict, collections.Counter)
        or origin in (dict, collections.Counter)
        or dataclasses.is_dataclass(kind)
    )


def expect(kind: Any, meta: Mapping[str, Any] | None = None, plural: bool = False) -> str:
    """What a value of type ``kind`` must be, in words (``"an integer from 1 to 4096"``)."""
    meta = meta or {}
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return (
            "plain JSON values"
            if plural
            else "a plain JSON value (string, number, boolean, null, list, mapping)"
        )
    if kind is _NONE:
        return "nulls" if plural else "null"
    if _is_union(kind):
        return " or ".join(expect(a, meta, plural) for a in args)
    if origin is Literal:
        return ("values among " if plural else "one of ") + ", ".join(repr(a) for a in args)
    if dataclasses.is_dataclass(kind):
        names = [f.name for f in dataclasses.fields(kind) if f.init and not f.metadata.get("internal")]
        listed = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        return f"{'mappings' if plural else 'a mapping'} of fields ({listed})"
    if kind is bool:
        return "booleans (true or false)" if plural else "true or false"
    if kind is int:
        return ("integers" if plural else "an integer") + _range(meta)
    if kind is float:
        return ("numbers" if plural else "a number") + _range(meta)
    if kind is str:
        return "strings" if plural else "a string"
    if _is_sequence_kind(kind):
        lists = "lists" if plural else "a list"
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(set(args)) == 1:
                return f"{lists} of {len(args)} {expect(args[0], meta, True)}"
            return f"{lists} [{', '.join(expect(a, meta) for a in args)}]"
        return f"{lists} of {expect(args[0] if args else Any, meta, True)}"
    if _is_mapping_kind(kind):
        key, value = _key_value(kind)
        maps = "mappings" if plural else "a mapping"
        return f"{maps} of {expect(key, None, True)} to {expect(value, meta, True)}"
    return getattr(kind, "__name__", str(kind))


class _Loader:
    """One load: the source, where values came from, and a budget on the number of values."""

    def __init__(self, source: str, origins: Mapping[str, str], error: type[ConfigError]) -> None:
        self.source = source
        self.origins = dict(origins)
        self.error = error
        self.values = 0

    # ------------------------------------------------------------------------------------------ errors

    def source_of(self, path: str) -> str:
        """The origin of the value at ``path``: the longest origin prefix, or the file."""
        best = ""
        for prefix in self.origins:
            if (path == prefix or path.startswith(prefix + ".")) and len(prefix) >= len(best):
                best = prefix
        if best or "" in self.origins:
            return self.origins[best]
        under = [
            origin for prefix, origin in self.origins.items() if not path or prefix.startswith(path + ".")
        ]
        return f"{self.source} with {', '.join(under)}" if under else self.source

    def fail(self, path: str, problem: str, meta: Mapping[str, Any] | None = None) -> ConfigError:
        source = self.source_of(path)
        text = f"{source}: field '{path}': {problem}" if path else f"{source}: {problem}"
        if meta and meta.get("hint"):
            text += f" ({meta['hint']})"
        return self.error(text, source=source, field=path)

    def bad(
        self, path: str, value: Any, kind: Any, meta: Mapping[str, Any], nullable: bool = False
    ) -> ConfigError:
        wanted = expect(kind, meta) + (" or null" if nullable else "")
        extra = ""
        if isinstance(value, bool) and kind is str:
            extra = " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote them)"
        return self.fail(path, f"got {show(value)}; expected {wanted}{extra}", meta)

    def count(self, path: str) -> None:
        self.values += 1
        if self.values > MAX_VALUES:
            raise self.fail(path, f"the config holds more than {MAX_VALUES} values")

    # ------------------------------------------------------------------------------------------ values

    def dataclass(self, cls: type, data: Any, path: str, fixed: Mapping[str, Any]) -> Any:
        self.count(path)
        fields = [f for f in dataclasses.fields(cls) if f.init]
        settable = {f.name: f for f in fields if not f.metadata.get("internal")}
        if not isinstance(data, Mapping):
            raise self.bad(path, data, cls, {})
        hints = _hints(cls)
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if not isinstance(key, str) or key not in settable:
                raise self.unknown(path, key, list(settable))
            f = settable[key]
            kwargs[key] = self.value(hints[key], value, _join(path, key), f.metadata)
        for f in fields:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and f.name not in kwargs and f.name not in fixed:
                raise self.fail(_join(path, f.name), f"missing; add '{f.name}:'", f.metadata)
        kwargs.update(fixed)
        try:
            return cls(**kwargs)
        except (ValueError, TypeError, ArithmeticError) as err:  # ConfigError is a ValueError
            raise self.wrap(path, err) from err

    def wrap(self, path: str, err: Exception) -> ConfigError:
        """A check of the dataclass itself (``__post_init__``) failed: say where, keep its message."""
        message = str(err)
        inner, problem = getattr(err, "where", None), getattr(err, "problem", None)
        if isinstance(inner, str) and isinstance(problem, str):  # an error naming a field inside this value
            path = _join(path, inner) if path else inner
            fix = getattr(err, "fix", None)
            message = f"{problem}. Fix: {fix}" if fix else problem
        source = self.source_of(path)
        if message.startswith(f"{source}:"):  # the check already named the file (evaluation tasks do)
            return self.error(message, source=source, field=getattr(err, "field", None) or path)
        if path and path not in message:  # most checks name their section already ("train.steps ...")
            message = f"field '{path}': {message}"
        return self.error(f"{source}: {message}", source=source, field=path)

    def unknown(self, path: str, key: Any, known: list[str]) -> ConfigError:
        where = _join(path, key) if isinstance(key, str) else path
        if not isinstance(key, str):
            return self.fail(where, f"got the key {show(key)}; field names are strings: {', '.join(known)}")
        close = difflib.get_close_matches(key, known, n=1) if len(key) <= _SHOWN_CHARS else []
        guess = f"did you mean '{close[0]}'? " if close else ""
        return self.fail(where, f"unknown field; {guess}known fields here: {', '.join(known)}")

    def value(self, kind: Any, value: Any, path: str, meta: Mapping[str, Any], nullable: bool = False) -> Any:
        self.count(path)
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if kind is Any:
            return self.plain(value, path, meta)
        if _is_union(kind):
            return self.union(kind, value, path, meta)
        if kind is _NONE:
            if value is not None:
                raise self.bad(path, value, kind, meta)
            return None
        if origin is Literal:
            for option in args:
                if type(option) is type(value) and option == value:
                    return option
            words = [a for a in args if isinstance(a, str)]
            guessable = isinstance(value, str) and len(value) <= _SHOWN_CHARS
            close = difflib.get_close_matches(value, words, n=1) if guessable else []
            guess = f"; did you mean {close[0]!r}?" if close else ""
            wanted = expect(kind, meta) + (" or null" if nullable else "")
            raise self.fail(path, f"got {show(value)}; expected {wanted}{guess}", meta)
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, Mapping):
                raise self.bad(path, value, kind, meta, nullable)
            return self.dataclass(kind, value, path, {})
        if _is_sequence_kind(kind):
            return self.sequence(kind, value, path, meta, nullable)
        if _is_mapping_kind(kind):
            return self.mapping(kind, value, path, meta, nullable)
        if kind is bool:
            if not isinstance(value, bool):
                raise self.bad(path, value, kind, meta, nullable)
            return value
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.bad(path, value, kind, meta, nullable)
            return self.bounded(value, kind, path, meta, nullable)
        if kind is float:
            if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
                value = float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.bad(path, value, kind, meta, nullable)
            try:
                number = float(value)
            except OverflowError:
                raise self.bad(path, value, kind, meta, nullable) from None
            if not math.isfinite(number):
                raise self.fail(path, f"got {show(value)}; expected a finite number{_range(meta)}", meta)
            return self.bounded(number, kind, path, meta, nullable)
        if kind is str:
            if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() <= 96:
                return str(value)  # YAML reads `name: 2024` as a number; the field wants its text
            if not isinstance(value, str):
                raise self.bad(path, value, kind, meta, nullable)
            return value
        raise TypeError(f"{path}: the config loader does not know the type {kind!r}")

    def bounded(self, number: float, kind: Any, path: str, meta: Mapping[str, Any], nullable: bool) -> Any:
        lo, hi = meta.get("min"), meta.get("max")
        low = lo is not None and (number <= lo if meta.get("above") else number < lo)
        if low or (hi is not None and number > hi):
            raise self.bad(path, number, kind, meta, nullable)
        return number

    def union(self, kind: Any, value: Any, path: str, meta: Mapping[str, Any]) -> Any:
        options = typing.get_args(kind)
        if value is None and _NONE in options:
            return None
        if Any in options:
            return self.plain(value, path, meta)
        others = [o for o in options if o is not _NONE]
        nullable = len(others) < len(options)
        if isinstance(value, list | tuple):
            fitting = [o for o in others if _is_sequence_kind(o)]
        elif isinstance(value, Mapping):
            fitting = [o for o in others if _is_mapping_kind(o)]
        else:
            fitting = [o for o in others if not _is_sequence_kind(o) and not _is_mapping_kind(o)]
        if len(fitting) == 1:  # the value's shape picks the option: its errors are the precise ones
            only = fitting[0]
            return self.value(only, value, path, meta, nullable=nullable and len(others) == 1)
        for option in fitting:
            try:
                return self.value(option, value, path, meta)
            except ConfigError:
                continue
        raise self.bad(path, value, kind, meta)

    def sequence(self, kind: Any, value: Any, path: str, meta: Mapping[str, Any], nullable: bool) -> Any:
        if not isinstance(value, list | tuple):
            raise self.bad(path, value, kind, meta, nullable)
        origin, args = typing.get_origin(kind) or kind, typing.get_args(kind)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise self.bad(path, value, kind, meta, nullable)
            items = [self.value(a, v, _join(path, str(i)), meta) for i, (a, v) in enumerate(zip(args, value))]
        else:
            item = args[0] if args else Any
            items = [self.value(item, v, _join(path, str(i)), meta) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items

    def mapping(self, kind: Any, value: Any, path: str, meta: Mapping[str, Any], nullable: bool) -> Any:
        if not isinstance(value, Mapping):
            raise self.bad(path, value, kind, meta, nullable)
        origin = typing.get_origin(kind) or kind
        key_kind, value_kind = _key_value(kind)
        out = {}
        for key, item in value.items():
            where = _join(path, str(key) if isinstance(key, str | int) and not isinstance(key, bool) else "?")
            if key_kind is int and isinstance(key, str) and _DECIMAL.fullmatch(key):
                key = int(key)  # JSON object keys are strings: "3" is the count 3
            if key_kind is str and not isinstance(key, str):
                raise self.fail(
                    where, f"got the key {show(key)}; expected {expect(key_kind, None, True)} as keys"
                )
            out[self.value(key_kind, key, where, {})] = self.value(value_kind, item, where, meta)
        return collections.Counter(out) if origin is collections.Counter else out

    def plain(self, value: Any, path: str, meta: Mapping[str, Any]) -> Any:
        """A free-form value: plain JSON data only (so that it saves as JSON), numbers within the bounds."""
        stack = [(value, path, 0)]
        while stack:
            item, where, depth = stack.pop()
            self.count(where)
            if depth > MAX_DEPTH:
                raise self.fail(where, f"nested more than {MAX_DEPTH} levels deep")
            if item is None or isinstance(item, bool | str):
                continue
            if isinstance(item, int | float):
                if isinstance(item, float) and not math.isfinite(item):
                    raise self.fail(where, f"got {show(item)}; expected a finite number{_range(meta)}", meta)
                if isinstance(item, int) and item.bit_length() > 96 and not meta.get("max"):
                    raise self.fail(where, f"got {show(item)}; expected a number of at most 28 digits", meta)
                self.bounded(item, float if isinstance(item, float) else int, where, meta, False)
            elif isinstance(item, list | tuple):
                stack.extend((v, _join(where, str(i)), depth + 1) for i, v in enumerate(item))
            elif isinstance(item, Mapping):
                for key, v in item.items():
                    if not isinstance(key, str):
                        raise self.fail(where, f"got the key {show(key)}; keys must be strings (quote them)")
                    stack.append((v, _join(where, key), depth + 1))
            else:
                raise self.fail(where, f"got {show(item)}; expected {expect(Any)}")
        return value


def _key_value(kind: Any) -> tuple[Any, Any]:
    """Key and value types of ``dict[K, V]`` (``Any`` when bare) or ``Counter[K]`` (values ``int``)."""
    args = typing.get_args(kind)
    if (typing.get_origin(kind) or kind) is collections.Counter:
        return (args[0] if args else Any), int
    return (args[0], args[1]) if len(args) == 2 else (Any, Any)


def _join(path: str, key: str) -> str:
    """``path.key``, with a long key cut short (keys of unknown fields come straight from the file)."""
    if len(key) > _SHOWN_CHARS:
        key = key[: _SHOWN_CHARS - 3] + "..."
    return f"{path}.{key}" if path else key
