"""``DataManager``: builds the dataset and its train/val/test loaders (Dassl's interface)."""
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from llu.utils import UserError, log_only

from .datasets import build_dataset
from .images import read_image
from .transforms import build_transform


class DatasetWrapper(Dataset):
    """Turns a list of ``Datum`` into dicts of ``img``, ``label``, ``domain``, ``impath``, ``index``."""

    def __init__(self, cfg, data_source, transform=None, is_train=False):
        self.cfg = cfg
        self.data_source = data_source
        self.transform = transform
        self.is_train = is_train

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        item = self.data_source[idx]
        img0 = read_image(item.impath)
        output = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        output["img"] = self.transform(img0) if self.transform is not None else img0
        return output


def build_data_loader(cfg, sampler_type="SequentialSampler", data_source=None, batch_size=64,
                      tfm=None, is_train=True, generator=None):
    dataset = DatasetWrapper(cfg, data_source, transform=tfm, is_train=is_train)
    if sampler_type == "RandomSampler":
        sampler = RandomSampler(dataset, generator=generator)
    elif sampler_type == "SequentialSampler":
        sampler = SequentialSampler(dataset)
    else:
        raise UserError(f"DATALOADER sampler must be RandomSampler or SequentialSampler, got {sampler_type!r}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        # A few-shot set smaller than one batch must still give a batch.
        drop_last=is_train and len(data_source) >= batch_size,
        pin_memory=torch.cuda.is_available() and cfg.USE_CUDA,
    )


class DataManager:
    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None):
        dataset = build_dataset(cfg)
        tfm_train = custom_tfm_train or build_transform(cfg, is_train=True)
        tfm_test = custom_tfm_test or build_transform(cfg, is_train=False)

        self.train_loader_x = build_data_loader(
            cfg, cfg.DATALOADER.TRAIN_X.SAMPLER, dataset.train_x, cfg.DATALOADER.TRAIN_X.BATCH_SIZE,
            tfm_train, is_train=True)
        self.train_loader_u = None
        self.val_loader = None
        if dataset.val:
            self.val_loader = build_data_loader(
                cfg, cfg.DATALOADER.TEST.SAMPLER, dataset.val, cfg.DATALOADER.TEST.BATCH_SIZE, tfm_test,
                is_train=False)
        self.test_loader = build_data_loader(
            cfg, cfg.DATALOADER.TEST.SAMPLER, dataset.test, cfg.DATALOADER.TEST.BATCH_SIZE, tfm_test,
            is_train=False)

        self._num_classes = dataset.num_classes
        self._num_source_domains = 1
        self._lab2cname = dataset.lab2cname
        self.dataset = dataset
        self.tfm_train = tfm_train
        self.tfm_test = tfm_test
        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @property
    def num_classes(self):
        return self._num_classes

    @property
    def num_source_domains(self):
        return self._num_source_domains

    @property
    def lab2cname(self):
        return self._lab2cname

    def show_dataset_summary(self, cfg):
        rows = [("Dataset", cfg.DATASET.NAME), ("# classes", f"{self.num_classes:,}"),
                ("# train_x", f"{len(self.dataset.train_x):,}")]
        if self.dataset.val:
            rows.append(("# val", f"{len(self.dataset.val):,}"))
        rows.append(("# test", f"{len(self.dataset.test):,}"))
        width = max(len(k) for k, _ in rows)
        log_only("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
        print(f"{cfg.DATASET.NAME}: " + ", ".join(f"{v} {k.lstrip('# ')}" for k, v in rows[1:]))
