"""Name -> object registries, with Dassl's ``Registry`` interface."""
import difflib

from llu.utils import UserError


class Registry:
    """A table of named objects filled by the ``register`` decorator."""

    def __init__(self, name):
        self._name = name
        self._obj_map = {}

    def _do_register(self, name, obj, force=False):
        if name in self._obj_map and not force:
            raise KeyError(f"An object named '{name}' was already registered in '{self._name}' registry")
        self._obj_map[name] = obj

    def register(self, obj=None, force=False):
        if obj is None:
            def wrapper(fn_or_class):
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class
            return wrapper
        self._do_register(obj.__name__, obj, force=force)
        return obj

    def get(self, name):
        if name not in self._obj_map:
            close = difflib.get_close_matches(name, self._obj_map, n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(
                f"unknown {self._name.lower()} '{name}'{hint} (registered: {', '.join(sorted(self._obj_map))})"
            )
        return self._obj_map[name]

    def registered_names(self):
        return list(self._obj_map.keys())

    def __contains__(self, name):
        return name in self._obj_map
