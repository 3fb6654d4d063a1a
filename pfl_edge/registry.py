"""Find algorithm halves by name: every module of a package is imported and each
subclass of the base that sets `name` is registered. Adding an algorithm adds files,
it edits none."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, TypeVar, cast

T = TypeVar("T", bound=type)


def discover(package: str, base: T) -> dict[str, T]:
    """Map name -> class for the concrete subclasses of `base` defined in `package`."""
    pkg = importlib.import_module(package)
    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{package}.{mod.name}")
    found: dict[str, T] = {}
    stack: list[type[Any]] = list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        name = cls.__dict__.get("name")
        if not isinstance(name, str) or not cls.__module__.startswith(package):
            continue
        if name in found and found[name] is not cls:
            raise RuntimeError(f"two {base.__name__}s named {name!r}: {found[name]} and {cls}")
        found[name] = cast(T, cls)
    return found


def lookup(package: str, base: T, name: str) -> T:
    """The class registered as `name`; ValueError listing the known names otherwise."""
    found = discover(package, base)
    if name not in found:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(sorted(found))}")
    return found[name]
