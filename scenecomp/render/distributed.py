"""Rendering on several devices and nodes through Lightning DDP.

Imported only on that path (``--devices``/``--num-nodes`` above 1), so one device
imports neither Lightning nor Hydra."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from scenecomp.compose import Composer
from scenecomp.layout import LayoutError
from scenecomp.render.batching import render_jobs
from scenecomp.render.manifest import merge_rank_files
from scenecomp.render.options import OutputError, UsageError, output_faults
from scenecomp.render.outputs import Outputs
from scenecomp.render.planning import Job, LayoutSource

if TYPE_CHECKING:
    from scenecomp.render.cli import Console


def make_trainer(args) -> L.Trainer:
    """Lightning's DDP for predicting on ``args.devices`` x ``args.num_nodes`` processes; its
    ``global_rank`` is known at once (from the launcher's variables or Lightning's own)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"lightning(\.|$)")
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|predict_dataloader).*")
    try:
        return L.Trainer(
            accelerator="gpu" if args.device_obj.type == "cuda" else "cpu",
            devices=args.devices,
            num_nodes=args.num_nodes,
            strategy="ddp",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            use_distributed_sampler=True,
        )
    except ValueError as e:  # Lightning's check of the devices against the cluster's
        raise UsageError(str(e)) from None


def _as_list(batch):
    return [job for job in batch if job is not None]


class Jobs(L.LightningDataModule):
    """The plan: rank 0 holds it and broadcasts it, or its ``error``, which every rank then raises
    (ranks started by torchrun are already waiting for the plan)."""

    def __init__(self, jobs: list[Job], batch_size: int, error: UsageError | OutputError | None = None):
        super().__init__()
        self.jobs, self.batch_size, self.error = jobs, batch_size, error

    def setup(self, stage):
        error = self.error and (isinstance(self.error, OutputError), str(self.error))
        self.jobs, error = self.trainer.strategy.broadcast((self.jobs, error), src=0)
        if error is not None:
            output_fault, message = error
            raise (OutputError if output_fault else UsageError)(message)
        # every rank gets at least one batch, or Lightning skips the hooks that hold the barrier
        self.jobs = self.jobs + [None] * max(0, self.trainer.world_size - len(self.jobs))

    def predict_dataloader(self):
        return DataLoader(self.jobs, batch_size=self.batch_size, shuffle=False, collate_fn=_as_list)


class Painter(L.LightningModule):
    """`render_jobs` as a predict step: ``(job, Rendering or LayoutError)`` per job of a batch."""

    def __init__(self, composer: Composer, batch_size: int, steps: bool):
        super().__init__()
        self.composer, self.batch_size, self.steps = composer, batch_size, steps
        self.background = composer.background_net  # registered, so Lightning moves them to the rank's device
        self.foreground = composer.foreground_net
        self.source = LayoutSource()

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # Jobs are file names and seeds; the composer moves what it makes

    def predict_step(self, batch, batch_idx):
        return render_jobs(self.composer, self.source, batch, self.batch_size, self.steps)


class Writer(BasePredictionWriter):
    """Each rank writes its images and its own rank manifest; rank 0 merges them in ``order``."""

    def __init__(
        self,
        composer: Composer,
        out: Path,
        meta: dict,
        order: dict,
        console: Console,
        *,
        steps: bool,
        layers: bool,
        ora: bool = False,
    ):
        super().__init__("batch")
        self.composer, self.out, self.meta, self.order, self.console = composer, out, meta, order, console
        self.steps, self.layers, self.ora = steps, layers, ora
        self.rendered, self.failed, self.failed_count, self.outputs, self.bar = 0, set(), 0, None, None
        self.fault: str | None = None  # this rank's output fault (`OutputError`'s message)

    def on_predict_start(self, trainer, pl_module):
        rank, world = trainer.global_rank, trainer.world_size
        try:
            self.outputs = Outputs(
                self.out,
                self.out / f".manifest.rank{rank}.jsonl",
                self.meta,
                resolution=self.composer.resolution,
                steps=self.steps,
                layers=self.layers,
                ora=self.ora,
            )
        except OutputError as e:
            self.fault = str(e)  # raised with the others' at the first batch (`_stop_together`)
        share = sum(job is not None for job in trainer.datamodule.jobs[rank::world])
        self.bar = self.console.progress(share, f"rank {rank}/{world}") if rank == 0 else None

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        for job, result in [] if self.fault else prediction:  # a fault at the start: write nothing
            if isinstance(result, LayoutError):
                if str(result) not in self.failed:
                    self.console.failed(str(result))
                self.failed.add(str(result))
                continue
            try:
                self.outputs.write(job, result, str(self.composer.device))  # the rank's, once Lightning moved it
            except OutputError as e:
                self.fault = str(e)
                break
            self.rendered += 1
        if self.bar is not None:
            self.bar.update(len(batch))
        self._stop_together(trainer, pl_module)

    def on_predict_end(self, trainer, pl_module):
        self._close()
        counts = torch.tensor([self.rendered, len(self.failed)], dtype=torch.float64, device=pl_module.device)
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
        self.rendered, self.failed_count = int(counts[0]), int(counts[1])
        trainer.strategy.barrier("scenecomp-render: manifests")
        if trainer.is_global_zero:
            try:
                with output_faults(self.out):
                    merge_rank_files(self.out, self.order)
            except OutputError as e:
                self.fault = str(e)
        self._stop_together(trainer, pl_module)

    def _stop_together(self, trainer, pl_module) -> None:
        """Raise the first faulty rank's `OutputError` on every rank, or go on on every rank.

        Every rank calls this at the same points (each batch, the end), so a rank whose
        output folder fails stops with the others instead of leaving them waiting at the
        next collective call forever. What was written before stays whole; the rank
        manifests are merged by the next run, which resumes."""
        world = trainer.world_size
        faulty = torch.tensor([world if self.fault is None else trainer.global_rank], device=pl_module.device)
        first = int(trainer.strategy.reduce(faulty, reduce_op="min"))  # the lowest faulty rank, or world
        if first < world:
            self._close()
            message = trainer.strategy.broadcast(self.fault, src=first)
            _leave_together(trainer, "scenecomp-render: output fault")
            raise OutputError(message)

    def _close(self) -> None:
        if self.outputs is not None:
            self.outputs.close()
            self.outputs = None
        self.console.close()


def render_distributed(
    trainer: L.Trainer,
    composer: Composer,
    jobs: list[Job],
    args,
    meta: dict,
    console: Console,
    steps: bool,
    error: UsageError | OutputError | None = None,
) -> tuple[int, int]:
    """Render through Lightning ``Trainer.predict`` (DDP, ``trainer.world_size`` processes).

    Rank 0 holds the plan and broadcasts it, or ``error``, which every rank then
    raises; every rank renders its share and writes its own rank manifest; rank 0
    merges them after a barrier. Returns (images written, layouts failed while
    rendering), summed over ranks, on rank 0."""
    out = Path(args.out)
    order = {f"{job.stem}.png": i for i, job in enumerate(jobs)}
    writer = Writer(composer, out, meta, order, console, steps=args.steps, layers=args.layers, ora=args.ora)
    trainer.callbacks.append(writer)
    trainer.predict(
        Painter(composer, args.batch_size, steps),
        datamodule=Jobs(jobs, args.batch_size, error),
        return_predictions=False,
    )
    if torch.distributed.is_available() and torch.distributed.is_initialized():  # not if a fault closed it
        _leave_together(trainer, "scenecomp-render: done")
    return writer.rendered, writer.failed_count


def _leave_together(trainer: L.Trainer, name: str) -> None:
    """Every rank passes a barrier, then closes its process group: a process that exits with its group open
    sometimes aborts at exit ("terminate called ...", exit -6) instead of exiting with its own status."""
    trainer.strategy.barrier(name)
    torch.distributed.destroy_process_group()
