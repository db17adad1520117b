"""Dataset readers; importing this package registers all of them in ``DATASET_REGISTRY``."""
