"""Config as code: typed dataclasses, overridable from the command line.

An experiment file returns a config object; `--config.optim.learning_rate=3e-4`
(or `optim.learning_rate=3e-4`) overrides one field. Values are parsed by the
field's declared type, so a wrong type or an unknown field is a clear error at
start-up, not a crash an hour into training.
"""

from __future__ import annotations

import ast
import dataclasses
import types
import typing


class ConfigError(ValueError):
    pass


def _fields(obj):
    return {f.name: f for f in dataclasses.fields(obj)}


def _parse(value: str, annotation, where: str):
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: cannot parse {value!r} as {annotation}")
    if annotation is bool:
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{where} expects a bool (true/false), got {value!r}")
    if annotation is int:
        try:
            return int(value.replace("_", ""))
        except ValueError:
            try:  # allow 1e4-style integers, but never silently truncate 0.5
                f = float(value)
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
            raise ConfigError(f"{where} expects an int, got {value!r}") from None
    if annotation is float:
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where} expects a float, got {value!r}") from None
    if annotation is str:
        return value
    if origin is tuple or annotation is tuple:
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = tuple(v.strip() for v in value.split(","))
        if not isinstance(parsed, (tuple, list)):
            parsed = (parsed,)
        if args and args[-1] is not Ellipsis and len(args) != len(parsed):
            raise ConfigError(f"{where} expects {len(args)} values, got {value!r}")
        item_types = [args[0]] * len(parsed) if args and args[-1] is Ellipsis else (args or [str] * len(parsed))
        return tuple(_parse(str(v), t, where) for v, t in zip(parsed, item_types))
    raise ConfigError(f"{where}: unsupported field type {annotation}")


def override(config, dotted: str, value: str, _prefix: str = ""):
    """Return a copy of `config` with the field at `dotted` (a.b.c) set from a string."""
    head, _, rest = dotted.partition(".")
    fields = _fields(config)
    if head not in fields:
        raise ConfigError(
            f"Unknown config field {head!r} in {_prefix + dotted!r} ({type(config).__name__}); "
            f"known fields: {sorted(fields)}."
        )
    current = getattr(config, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"Config field {head!r} is a {type(current).__name__}, it has no field {rest!r}.")
        return dataclasses.replace(config, **{head: override(current, rest, value, f"{_prefix}{head}.")})
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"Config field {head!r} is a group; set one of its fields, e.g. {head}.{next(iter(_fields(current)))}=...")
    hints = typing.get_type_hints(type(config))
    return dataclasses.replace(config, **{head: _parse(value, hints[head], f"config field {dotted!r}")})


def apply_overrides(config, overrides: list[str]):
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"Override {item!r} must look like field.name=value.")
        key = key.removeprefix("--").removeprefix("config.")
        config = override(config, key, value)
    return config


def config_class(name: str, source, *, exclude=(), replace=None, module: str | None = None, doc: str | None = None):
    """A frozen config dataclass with the fields of the dataclass `source` (e.g. a flax
    module): the same names, types, defaults and order, so an option is declared once,
    on `source`, and a new one is configurable at once.

    exclude: fields of `source` a config does not set (the code that builds `source`
      gives them). replace: {field: (type, default)} where the config's form differs
      (e.g. a dtype given by name). module: the module the class is defined in (pickle,
      type hints).
    """
    replace = dict(replace or {})
    hints = typing.get_type_hints(source)
    fields = []
    for f in dataclasses.fields(source):
        if f.name in exclude or not f.init:
            continue
        annotation, default = replace.pop(f.name, (hints[f.name], f.default))
        if default is dataclasses.MISSING:
            raise TypeError(f"{source.__name__}.{f.name} has no default: exclude it or give one in replace")
        fields.append((f.name, annotation, dataclasses.field(default=default)))
    if replace:
        raise TypeError(f"replace names fields {sorted(replace)} that {source.__name__} does not have")
    namespace = {"__module__": module} if module else {}
    if doc:
        namespace["__doc__"] = doc
    return dataclasses.make_dataclass(name, fields, frozen=True, namespace=namespace)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls, values: dict):
    """Rebuild a config dataclass from `to_dict` output (e.g. a run's config.json)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        if name not in hints:
            raise ConfigError(f"Unknown config field {name!r} for {cls.__name__}.")
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
