"""The method registry: ``--method=NAME`` -> its class, looked up by name as RecBole looks up models.

Each method lives in a module of its own (``bet/`` for BET's search) and imports only ``methods.base``;
the registry imports a method's module only when that method is asked for.
"""
from __future__ import annotations

import importlib

# name -> (module under recbole_bet.methods, class)
REGISTRY = {
    "bet": ("bet", "BET"),
    "es": ("fixed", "EqualSizes"),
    "mr": ("fixed", "MixedRandom"),
    "pep": ("pep", "PEP"),
    "sseds": ("sseds", "SSEDS"),
    "esapn": ("esapn", "ESAPN"),
    "rule": ("rule", "RULE"),
    "magprune": ("magprune", "MagnitudePruning"),
    "ciess": ("ciess", "CIESS"),
    "optembed": ("optembed", "OptEmbed"),
}
METHODS = tuple(REGISTRY)


def get_method_class(name: str):
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    module, cls = REGISTRY[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def get_method(name: str):
    """A fresh instance of the method registered as ``name``."""
    return get_method_class(name)()
