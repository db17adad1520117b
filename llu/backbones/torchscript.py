"""The weights of a TorchScript archive (OpenAI's CLIP ``.pt`` files), read without running its code.

``torch.jit.load`` runs code the archive carries (its modules' ``__setstate__``, in TorchScript), so a
file from elsewhere could do what that code does. The archive's weights are plain data: ``data.pkl``
builds the module tree from ``__torch__`` classes and tensors whose bytes lie in ``data/``, and the
``code/`` files declare, as text, which attributes of each class are parameters and buffers. Here the
pickle is read with a restricted unpickler (``__torch__`` classes become inert stand-ins, only
tensor rebuilding is allowed), the declarations are read as text, and the state dict is assembled
from them: the names and tensors ``torch.jit.load(path).state_dict()`` would give.
"""
import collections
import pickle
import re
import zipfile

import torch
import torch._utils

_CLASS = re.compile(r"^class (\w+)\(Module\):", re.M)
_DECLARED = re.compile(r"^  (__parameters__|__buffers__) = \[([^\]]*)\]", re.M)
_STORAGE_DTYPES = {f"{name}Storage": dtype for name, dtype in (
    ("Float", torch.float32), ("Half", torch.float16), ("Double", torch.float64), ("BFloat16", torch.bfloat16),
    ("Long", torch.int64), ("Int", torch.int32), ("Short", torch.int16), ("Char", torch.int8),
    ("Byte", torch.uint8), ("Bool", torch.bool))}


class TorchScriptFormatError(Exception):
    """The archive holds something this reader does not understand."""


class _Module:
    """Stands in for a ``__torch__`` class: it only receives the pickled attributes."""

    qualname = ("", "")

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:  # the class restores its state with its own __setstate__: only its code knows the layout
            self.__dict__["_custom_state"] = True


def _names(text):
    return [name.strip().strip("\"'") for name in text.split(",") if name.strip()]


def _declarations(archive, prefix):
    """{(module, class name): (parameter names, buffer names)} from the archive's code files."""
    found = {}
    code = f"{prefix}/code/"
    for name in archive.namelist():
        if name.startswith(code) and name.endswith(".py"):
            module = name[len(code):-len(".py")].replace("/", ".")
            text = archive.read(name).decode("utf-8", "replace")
            starts = list(_CLASS.finditer(text))
            for match, following in zip(starts, starts[1:] + [None]):
                body = text[match.end():following.start() if following else len(text)]
                declared = {kind: _names(names) for kind, names in _DECLARED.findall(body)}
                found[(module, match.group(1))] = (declared.get("__parameters__", []), declared.get("__buffers__", []))
    return found


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive, prefix):
        super().__init__(file)
        self.archive, self.prefix, self.classes = archive, prefix, {}

    def find_class(self, module, name):
        if module.startswith("__torch__"):
            key = (module, name)
            if key not in self.classes:
                self.classes[key] = type(name, (_Module,), {"qualname": key})
            return self.classes[key]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return torch._utils._rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise TorchScriptFormatError(f"its data refers to {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise TorchScriptFormatError(f"unknown storage record {pid!r}")
        dtype, key = pid[1], pid[2]
        data = bytearray(self.archive.read(f"{self.prefix}/data/{key}"))
        untyped = torch.UntypedStorage.from_buffer(data, dtype=torch.uint8) if data else torch.UntypedStorage(0)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def _collect(module, declarations, prefix, out):
    if module.qualname not in declarations:
        raise TorchScriptFormatError(f"no parameter declaration for {'.'.join(module.qualname)}")
    if vars(module).get("_custom_state"):
        raise TorchScriptFormatError(f"{'.'.join(module.qualname)} restores its state with its own code")
    parameters, buffers = declarations[module.qualname]
    for name in parameters + buffers:
        if name not in vars(module):
            raise TorchScriptFormatError(f"{'.'.join(module.qualname)} declares {name} but its data lacks it")
        value = vars(module)[name]
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
    for name, value in vars(module).items():
        if isinstance(value, _Module):
            _collect(value, declarations, f"{prefix}{name}.", out)
    return out


def read_state_dict(path):
    """The state dict of the TorchScript archive at ``path``, without executing anything from it."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise TorchScriptFormatError("expected one <name>/data.pkl")
        prefix = pickles[0].split("/")[0]
        declarations = _declarations(archive, prefix)
        with archive.open(pickles[0]) as f:
            try:
                root = _Unpickler(f, archive, prefix).load()
            except (pickle.UnpicklingError, AttributeError, TypeError, ValueError, KeyError, EOFError) as e:
                raise TorchScriptFormatError(f"{type(e).__name__}: {e}") from None
    if not isinstance(root, _Module):
        raise TorchScriptFormatError("its data is not a module")
    return {key: value.clone() for key, value in _collect(root, declarations, "", collections.OrderedDict()).items()}
