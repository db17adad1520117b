"""Models by their Hugging Face Hub id (``hf:org/name``, ``openclip:hf-hub:org/name``), read from the
local Hub cache only, as huggingface_hub lays it out and finds it (``HF_HUB_CACHE``, else
``HF_HOME/hub``, else ``~/.cache/huggingface/hub``): nothing is looked up online, as under
``HF_HUB_OFFLINE=1``. A model that is not in the cache is one line saying how to download it.
"""
import contextlib
import os.path as osp

from llu.utils import UserError


def is_repo_id(text):
    """Whether ``text`` has the form of a Hub repository id, ``org/name`` (``./x``, ``/x``, ``~/x`` and
    ``a/b/c`` are paths)."""
    if text.count("/") != 1:
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def model_folder(spec, where):
    """The folder ``spec`` names: an existing folder (it wins), else the cached snapshot of the Hub
    repository ``spec`` (``org/name``); None when it is neither."""
    folder = osp.expanduser(spec)
    if osp.isdir(folder):
        return folder
    return cached_snapshot(spec, where) if is_repo_id(spec) else None


def cached_snapshot(repo_id, where):
    """The folder of ``repo_id``'s snapshot (its main branch) in the local Hub cache; ``where`` (the
    setting that named it: "MODEL.BACKBONE.NAME hf:org/name") begins the line said when it is not there."""
    from huggingface_hub import constants, snapshot_download
    try:
        return snapshot_download(repo_id, local_files_only=True)
    except FileNotFoundError:  # huggingface_hub's LocalEntryNotFoundError: no snapshot of main in the cache
        cache, folder = constants.HF_HUB_CACHE, f"models--{repo_id.replace('/', '--')}"
        raise UserError(f"{where}: {repo_id} is not in the Hugging Face cache ({cache}); "
                        f"download it with `hf download {repo_id}` on a machine with internet, then copy its "
                        f"{folder} folder into {cache} (or set HF_HUB_CACHE to the cache it is in)") from None


@contextlib.contextmanager
def offline():
    """huggingface_hub (and transformers through it) in offline mode, as ``HF_HUB_OFFLINE=1`` sets it at
    import: a library that would fetch a file (open_clip's Hugging Face tokenizer) finds it in the
    cache or fails, and makes no request."""
    from huggingface_hub import constants
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
