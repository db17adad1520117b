"""The on-disk cache of CLIP image features: every image is encoded once per (weights, transform,
view), whatever the seeds, shot counts, ablations and reruns that need it.

Layout: ``<FEATURES.CACHE_DIR>/<namespace>/`` per (weights file's sha256, model dtype, transform,
view), with a ``meta.json`` saying what it holds, and shards: ``<id>.pt`` (features [n, D] float32,
unit norm) beside ``<id>.json`` (the n image keys: path, size and modification time, so a changed
file is encoded again). A request encodes only the images no shard holds and writes them as a new
shard. Files are written atomically (temporary file, then rename; the key list last), so a reader
never sees half a shard; a shard that fails validation (shape, dtype, finiteness, count) is
removed and its images encoded again. Stale temporary files of killed writers are removed.

The cache is bounded by ``FEATURES.CACHE_MAX_GB``: after a write, the least recently used
namespaces are removed until it fits (never the one in use). ``python -m llu.trainers.feature_cache
list|clear`` shows and empties it.
"""
import argparse
import hashlib
import json
import math
import os
import os.path as osp
import shutil
import sys
import time
import uuid

import torch

from llu.engine import CN, DatasetWrapper, config_extension
from llu.utils import UserError, exit_on_user_error, load_torch, progress, save_torch, user_cache_dir, write_json

VERSION = 2
STALE_TEMPORARY_SECONDS = 24 * 3600  # a temporary file this old belongs to a writer that was killed
# Images a decoding worker hands over at a time: the encoder waits only for the first few images,
# not for a whole batch, and its batches are these chunks put together (the same images and shape).
DECODE_CHUNK = 8


@config_extension
def add_features_config(cfg):
    cfg.FEATURES = CN()
    cfg.FEATURES.CACHE_DIR = ""  # "" = $LLU_CACHE/features (default ~/.cache/llu/features)
    cfg.FEATURES.CACHE_MAX_GB = 50.0  # least recently used features are removed beyond this (0: no bound)
    cfg.FEATURES.AUG_VIEWS = 0  # augmented views cached per training image (0: un-augmented only)
    cfg.FEATURES.BATCH_SIZE = 64  # images per encoder pass when filling the cache


def default_directory():
    return user_cache_dir("features")


def describe_transform(transform):
    """A description of a transform that is the same in every process: torchvision transforms by
    their repr (their settings), plain functions by their qualified name (not their address)."""
    steps = getattr(transform, "transforms", None)
    if steps is not None:
        return [describe_transform(step) for step in steps]
    if callable(transform) and hasattr(transform, "__qualname__") and not isinstance(transform, torch.nn.Module):
        return f"{transform.__module__}.{transform.__qualname__}"
    return repr(transform)


def image_key(path):
    """What identifies an image file's content here: its path, size and modification time."""
    stat = os.stat(path)
    return f"{osp.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"


class _ViewDataset(DatasetWrapper):
    """Images under a transform, each in its own view (``views[i]`` for ``data_source[i]``); an
    augmented view is seeded by (view, the image's path relative to the data root), so it is the same
    image whatever list it comes in, on any machine, in any process. An image that cannot be read
    gives its one-line message instead (``_collate_images``)."""

    def __init__(self, cfg, data_source, transform, views, root):
        super().__init__(cfg, data_source, transform=transform)
        self.views, self.root = views, root

    def __getitem__(self, idx):
        try:
            return self._image(idx)
        except UserError as e:
            return str(e)

    def _image(self, idx):
        view = self.views[idx]
        if view == 0:
            return super().__getitem__(idx)["img"]
        relative = osp.relpath(self.data_source[idx].impath, self.root)
        seed = int.from_bytes(hashlib.sha256(f"{view}:{relative}".encode()).digest()[:8], "little")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return super().__getitem__(idx)["img"]


def _collate_images(items):
    """A chunk of images as one tensor, or the message of its first unreadable image (raised by the
    encoding process: an exception raised in a worker would reach the user wrapped in its traceback)."""
    unreadable = [item for item in items if isinstance(item, str)]
    return unreadable[0] if unreadable else torch.stack(items)


def decoding_workers(cfg):
    """Processes that decode and transform images beside the encoder: DATALOADER.NUM_WORKERS, but never
    more than the cores the encoding process leaves (8 workers on 2 cores cost more to start than they
    save). The features are the same bits with any number."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(cfg.DATALOADER.NUM_WORKERS, max(0, cores - 1))


class FeatureCache:
    """Image features of one model, computed once per image and view and kept on disk."""

    def __init__(self, cfg, clip_model, device):
        self.cfg = cfg
        self.clip_model = clip_model
        self.device = device
        self.directory = cfg.FEATURES.CACHE_DIR or default_directory()
        self.max_bytes = cfg.FEATURES.CACHE_MAX_GB * 1e9
        self.root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT or "."))
        self.dim = clip_model.embed_dim
        self.encoder_passes = 0  # images encoded by this instance (0 when everything was cached)
        self.encode_seconds = 0.0  # and the time that took

    def namespace(self, transform, view):
        description = {"version": VERSION, "weights_sha256": self.clip_model.identity,
                       "dtype": str(self.clip_model.dtype), "transform": describe_transform(transform), "view": view,
                       "kernels": kernel_family(self.device)}
        digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:24]
        return osp.join(self.directory, digest), description

    def get(self, data_source, transform, view=0, desc=""):
        """(features [N, D] unit-norm float32 on CPU, labels [N]) for one view of ``data_source``."""
        return self.get_views(data_source, transform, [view], desc)[0]

    def get_views(self, data_source, transform, views, desc=""):
        """[(features, labels)] of ``data_source`` for each of ``views``. What no shard holds is encoded
        in one pass over all these views (batches filled across views, not padded once per view)."""
        keys = [image_key(item.impath) if osp.isfile(item.impath) else item.impath for item in data_source]
        namespaces = [self.namespace(transform, view) for view in views]
        known = [self._read_shards(folder, set(keys)) for folder, _ in namespaces]
        missing = [[i for i, key in enumerate(keys) if key not in found] for found in known]  # per view
        if any(missing):
            # Extraction must not consume the global random stream (a DataLoader draws a seed from it),
            # or a run that fills the cache would train differently from one that reads it.
            with torch.random.fork_rng(devices=[]):
                encoded = self._encode([data_source[i] for rows in missing for i in rows], transform,
                                       [view for view, rows in zip(views, missing) for _ in rows], desc)
            for (folder, description), found, rows, features in zip(namespaces, known, missing,
                                                                    encoded.split([len(r) for r in missing])):
                if rows:
                    self._write_shard(folder, description, [keys[i] for i in rows], features)
                    found.update(zip((keys[i] for i in rows), features))
        for (folder, _), rows in zip(namespaces, missing):
            if not rows:
                touch(folder)
        labels = torch.tensor([item.label for item in data_source], dtype=torch.long)
        return [(torch.stack([found[key] for key in keys]) if keys else torch.empty(0, self.dim), labels)
                for found in known]

    def _read_shards(self, folder, wanted):
        """{image key: feature} of the wanted images that valid shards in ``folder`` hold."""
        found = {}
        if not osp.isdir(folder):
            return found
        remove_stale_temporaries(folder)
        for name in sorted(os.listdir(folder)):
            if not (name.endswith(".json") and name != "meta.json"):
                continue
            shard = osp.join(folder, name[:-len(".json")])
            try:
                with open(shard + ".json") as f:
                    keys = json.load(f)
                if not wanted.intersection(keys):
                    continue
                features = load_torch(shard + ".pt")
                self._check_shard(features, keys)
            except (OSError, ValueError, UserError) as e:
                print(f"Note: feature cache shard {shard} is unusable ({e}); encoding its images again")
                for path in (shard + ".json", shard + ".pt"):
                    if osp.exists(path):
                        os.remove(path)
                continue
            found.update((key, feature) for key, feature in zip(keys, features) if key in wanted)
        return found

    def _check_shard(self, features, keys):
        if not isinstance(features, torch.Tensor) or features.dtype != torch.float32:
            raise ValueError("not a float32 tensor")
        if not isinstance(keys, list) or features.shape != (len(keys), self.dim):
            raise ValueError(f"shape {tuple(features.shape)}, expected ({len(keys)}, {self.dim})")
        if not torch.isfinite(features).all():
            raise ValueError("it holds NaN or infinite values")

    def _write_shard(self, folder, description, keys, features):
        shard = osp.join(folder, uuid.uuid4().hex)
        try:
            os.makedirs(folder, exist_ok=True)
            if not osp.isfile(osp.join(folder, "meta.json")):
                write_json(description, osp.join(folder, "meta.json"))
            save_torch(features.contiguous(), shard + ".pt")
            write_json(keys, shard + ".json")  # last: a shard counts once its key list exists
        except OSError as e:
            print(f"Note: cannot write the feature cache to {self.directory} ({e}); set FEATURES.CACHE_DIR or "
                  f"LLU_CACHE to a writable folder to reuse features")
            return
        touch(folder)
        evict(self.directory, self.max_bytes, keep=folder)

    def _encode(self, data_source, transform, views, desc):
        start = time.time()
        try:
            return self._encode_images(data_source, transform, views, desc)
        finally:
            self.encode_seconds += time.time() - start

    @torch.no_grad()
    def _encode_images(self, data_source, transform, views, desc):
        """Features of the images in order. Workers (``decoding_workers``) decode and transform chunks of
        images while this process encodes; each batch the encoder sees is FEATURES.BATCH_SIZE images in
        order, whatever the chunks, so the features do not depend on the workers."""
        size = self.cfg.FEATURES.BATCH_SIZE
        on_gpu = torch.device(self.device).type == "cuda"
        loader = torch.utils.data.DataLoader(
            _ViewDataset(self.cfg, data_source, transform, views, self.root), batch_size=math.gcd(size, DECODE_CHUNK),
            shuffle=False, num_workers=decoding_workers(self.cfg), collate_fn=_collate_images, pin_memory=on_gpu)
        features = []
        label = f"Encoding {len(data_source)} {desc + ' ' if desc else ''}images" + _views_label(sorted(set(views)))
        for batch in progress(_batches(loader, size, self.device, on_gpu), label):
            features.append(self.encode_full_batch(batch).cpu())
        self.encoder_passes += len(data_source)
        return torch.cat(features)

    def encode_full_batch(self, images):
        """Features of ``images``, always computed in a batch of FEATURES.BATCH_SIZE (a short last batch is
        padded with copies of its first image): kernels are chosen by the batch's shape and give other
        bits for other shapes, so an image's features must not depend on how many came with it; then
        they are the same whichever run, list or order first asked for them."""
        count, size = images.shape[0], self.cfg.FEATURES.BATCH_SIZE
        if count < size:
            images = torch.cat([images, images[:1].expand(size - count, *images.shape[1:])])
        return self.clip_model.encode_images(images)[:count]


def _batches(loader, size, device, on_gpu):
    """The loader's chunks of images on ``device``, put together into batches of ``size`` (the last one
    shorter); an unreadable image's message is raised as the UserError it was."""
    batch = []
    for chunk in loader:
        if isinstance(chunk, str):
            raise UserError(chunk)
        batch.append(chunk.to(device, non_blocking=on_gpu))
        if sum(len(images) for images in batch) == size:
            yield torch.cat(batch)
            batch = []
    if batch:
        yield torch.cat(batch)


def _views_label(views):
    if views == [0]:
        return ""
    if len(views) == 1:
        return f" (view {views[0]})"
    return f" (views {views[0]}-{views[-1]})" if views == list(range(views[0], views[-1] + 1)) else f" (views {views})"


# ---------------------------------------------------------------------------------------------
# Housekeeping

def touch(folder):
    """Mark a namespace as used now (eviction removes the least recently used first)."""
    try:
        os.utime(folder)
    except OSError:
        pass


def remove_stale_temporaries(folder, age=STALE_TEMPORARY_SECONDS):
    now = time.time()
    for name in os.listdir(folder):
        path = osp.join(folder, name)
        if name.startswith(".") and name.endswith(".tmp"):
            try:
                if now - os.stat(path).st_mtime > age:
                    os.remove(path)
            except OSError:
                pass


def folder_bytes(folder):
    total = 0
    for name in os.listdir(folder):
        try:
            total += os.stat(osp.join(folder, name)).st_size
        except OSError:
            pass
    return total


def kernel_family(device):
    """What computes the encoder's float bits: the GPU's name, or the CPU kernels torch dispatches to
    (``ATEN_CPU_CAPABILITY`` can choose others on one machine). Features cached under other kernels
    differ in the last bits, so they are not served: a run's features are those its own kernels give."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu:{torch.backends.cpu.get_cpu_capability()}"


def namespaces(directory):
    """[(folder, bytes, last used, meta)] of the cache's namespaces, least recently used first."""
    if not osp.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        folder = osp.join(directory, name)
        if not osp.isdir(folder):
            continue
        try:
            with open(osp.join(folder, "meta.json")) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            meta = {}
        found.append((folder, folder_bytes(folder), osp.getmtime(folder), meta))
    return sorted(found, key=lambda entry: entry[2])


def evict(directory, max_bytes, keep=None):
    """Remove least recently used namespaces (never ``keep``) until the cache holds at most ``max_bytes``."""
    if max_bytes <= 0:
        return
    entries = namespaces(directory)
    total = sum(size for _, size, _, _ in entries)
    for folder, size, _, _ in entries:
        if total <= max_bytes:
            break
        if keep and osp.abspath(folder) == osp.abspath(keep):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total -= size
        print(f"Note: feature cache over {max_bytes / 1e9:.1f} GB (FEATURES.CACHE_MAX_GB); removed {folder}")


def main(argv=None, prog="python -m llu.trainers.feature_cache"):
    parser = argparse.ArgumentParser(prog=prog,
                                     description="List or clear the feature cache.")
    parser.add_argument("command", choices=("list", "clear"))
    parser.add_argument("--dir", default="", help="the cache folder (default: $LLU_CACHE/features)")
    parser.add_argument("--older-than-days", type=float, default=0.0,
                        help="clear: only namespaces unused for this many days")
    args = parser.parse_args(argv)
    directory = args.dir or default_directory()
    entries = namespaces(directory)
    if args.command == "list":
        for folder, size, used, meta in entries:
            shards = sum(name.endswith(".pt") for name in os.listdir(folder))
            print(f"{osp.basename(folder)}  {size / 1e6:9.1f} MB  {shards:4d} shard(s)  last used "
                  f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(used))}  weights "
                  f"{str(meta.get('weights_sha256', '?'))[:12]}  view {meta.get('view', '?')}")
        print(f"{len(entries)} namespace(s), {sum(e[1] for e in entries) / 1e6:.1f} MB in {directory}")
        return 0
    cutoff = time.time() - args.older_than_days * 86400
    removed = [folder for folder, _, used, _ in entries if used <= cutoff]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"removed {len(removed)} of {len(entries)} namespace(s) from {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
