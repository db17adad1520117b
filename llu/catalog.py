"""``Catalog``: the dataset readers' and the trainers' name -> class tables (``llu.datasets.DATASETS``,
``llu.trainers.TRAINERS``). Imports nothing, so that importing one trainer module alone stays light."""


class Catalog(dict):
    """name -> class, filled by using the catalog as a class decorator (``@dataset``, ``@trainer``)."""

    def __call__(self, cls):
        self[cls.__name__] = cls
        return cls

    def register_into(self, registry, names=None, keep_existing=False):
        """Register the classes (all, or ``names``) into a Dassl-style registry (registering one
        twice is a no-op). A name that another class holds already is skipped and returned with
        ``keep_existing`` (a CoOp checkout keeps its own CoOp), else an error."""
        skipped = []
        for name in list(names or self):
            cls = self[name]
            if name in registry.registered_names():
                if registry.get(name) is cls:
                    continue
                if not keep_existing:
                    from llu.utils import UserError
                    raise UserError(f"{name} is registered already by {registry.get(name).__module__}")
                skipped.append(name)
                continue
            registry.register(cls)
        return skipped
