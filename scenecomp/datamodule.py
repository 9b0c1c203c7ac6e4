"""``SceneDataModule``: train/val loaders of ``SceneDataset`` for Lightning training.

Kept apart from scenecomp/data.py so that datasets and ``scenecomp-data`` do not
import Lightning.
"""

from __future__ import annotations

import warnings

import lightning as L
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from scenecomp.data import DataError, SceneDataset

__all__ = ["SceneDataModule"]

# torchdata 0.11's StatefulDataLoader calls torch.set_vital, deprecated in later torch: a warning per run that
# says nothing to a user
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


class SceneDataModule(L.LightningDataModule):
    """Train (and optional val/test) loaders of ``SceneDataset`` from plain values.

    ``train``/``val``: a COCO instances JSON or a folder holding
    ``annotations.json``; their images are in ``images/`` beside it unless
    ``train_images``/``val_images`` say otherwise. The validation set uses the
    training set's categories (same indices). ``limit`` caps both sets.
    Call ``check()`` (``setup()`` calls it) to validate paths and categories
    up front; afterwards ``.categories`` holds the names in index order.
    """

    def __init__(
        self,
        train: str,
        val: str | None = None,
        categories=None,
        resolution: int = 64,
        max_objects: int = 8,
        min_area: float = 0.0,
        batch_size: int = 32,
        num_workers: int = 0,
        limit: int | None = None,
        seed: int = 0,
        train_images: str | None = None,
        val_images: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.train_path, self.val_path = train, val
        self.train_images, self.val_images = train_images, val_images
        self.requested_categories = categories  # SceneDataset parses names or "a,b"
        self.resolution, self.max_objects, self.min_area = int(resolution), int(max_objects), float(min_area)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.limit, self.seed = (None if limit is None else int(limit)), int(seed)
        self.train_set: SceneDataset | None = None
        self.val_set: SceneDataset | None = None

    def check(self) -> SceneDataModule:
        """Build the datasets (reads only the JSON files); raises DataError on bad config."""
        if self.batch_size < 1:
            raise DataError(f"batch_size must be positive, got {self.batch_size}")
        if self.train_set is None:
            self.train_set = SceneDataset(
                self.train_path,
                self.train_images,
                self.requested_categories,
                self.resolution,
                self.max_objects,
                self.min_area,
                self.limit,
            )
        if self.val_path is not None and self.val_set is None:
            self.val_set = SceneDataset(
                self.val_path,
                self.val_images,
                self.train_set.categories,
                self.resolution,
                self.max_objects,
                self.min_area,
                self.limit,
            )
        return self

    @property
    def categories(self) -> list[str]:
        return self.check().train_set.categories

    def setup(self, stage: str | None = None) -> None:
        self.check()

    def _loader(self, dataset: SceneDataset, shuffle: bool) -> StatefulDataLoader:
        # stateful: Lightning saves where in the epoch a checkpoint was taken and a resumed run goes on from
        # there (a plain DataLoader would start the epoch's order again)
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return StatefulDataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=shuffle and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self):
        return self._loader(self.check().train_set, shuffle=True)

    def val_dataloader(self):
        self.check()
        return [] if self.val_set is None else self._loader(self.val_set, shuffle=False)

    def test_dataloader(self):
        return self.val_dataloader()
