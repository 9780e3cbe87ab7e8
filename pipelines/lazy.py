"""Heavy imports (torch, numba, the renderer) that a pipeline module binds only when it does work, so that
`python -m pipelines.NAME --help` and a wrong flag answer at once.

A module lists them as `{name: "module"}` (the module itself) or `{name: "module:attribute"}` and calls
`bind(globals(), names)` before work. Imported as a library it binds them at once (`bind_unless_main`), so
its functions and anyone who patches its attributes see what they always saw.
"""

from __future__ import annotations

import importlib


def bind(namespace: dict, names: dict[str, str]) -> None:
    """Bind the `names` not bound in `namespace` yet (one already set, e.g. by a test, is kept)."""
    for name, where in names.items():
        if name not in namespace:
            module, _, attribute = where.partition(":")
            value = importlib.import_module(module)
            namespace[name] = getattr(value, attribute) if attribute else value


def bind_unless_main(namespace: dict, names: dict[str, str]) -> None:
    """`bind` now, unless the module runs as `python -m` (its `main` binds them after the flags)."""
    if namespace.get("__name__") != "__main__":
        bind(namespace, names)
