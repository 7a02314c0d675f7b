"""The Lightning module for nodule detection: patch loss in training, CPM on whole volumes in
validation (the early-stopping and checkpoint metric), and a per-step loss recorder."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from hounsfield.evaluate.froc import CPM_FP_RATES, Detection, Nodule, cpm, curve_of, match, sensitivity_at
from hounsfield.infer.window import sliding_window
from hounsfield.models.detector import build_network, decode, detection_loss
from hounsfield.train.data import PatchDataset, PreparedVolume
from hounsfield.train.recipe import Recipe


class FiniteGradients:
    """Mixin for Lightning modules: a step whose gradients are not finite is dropped."""

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        """Clip as configured, but first drop a step whose gradients are not finite.

        Clipping an infinite norm turns every gradient into NaN and the weights with it; a
        zeroed step only lets the optimiser's momentum move (and is counted in the log).
        """
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        finite = all(torch.isfinite(g).all() for g in grads)
        if not finite:
            for g in grads:
                g.zero_()
            self._skipped = getattr(self, "_skipped", 0) + 1
            self.log("skipped_steps", float(self._skipped))
            return
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)


def epoch_loader(module: L.LightningModule, ds) -> DataLoader:  # noqa: ANN001
    """The training loader of ``ds`` (a seeded dataset with ``set_epoch``) for this epoch.

    Under DDP every rank takes every world-th sample, in order, so the ranks together see the
    same global batch as one process does."""
    r = module.recipe
    ds.set_epoch(module.current_epoch)
    world = module.trainer.world_size if module.trainer else 1
    if world > 1:
        sampler = DistributedSampler(ds, num_replicas=world, rank=module.trainer.global_rank,
                                     shuffle=False)
        return DataLoader(ds, batch_size=r.batch_size // world, sampler=sampler,
                          num_workers=r.num_workers)
    return DataLoader(ds, batch_size=r.batch_size, shuffle=False, num_workers=r.num_workers)


class NoduleDetectionModule(FiniteGradients, L.LightningModule):
    def __init__(self, recipe: Recipe, train_volumes: list[PreparedVolume],
                 val_volumes: list[PreparedVolume], *, lr: float | None = None) -> None:
        super().__init__()
        self.recipe = recipe
        self.net = build_network(recipe.network)
        self.train_volumes = train_volumes
        self.val_volumes = val_volumes
        self.lr = lr or recipe.optimizer.lr
        self._val_dets: list[Detection] = []
        self.save_hyperparameters({"recipe": recipe.model_dump(mode="json"), "lr": self.lr})

    # -- data ------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        r = self.recipe
        return epoch_loader(self, PatchDataset(
            self.train_volumes, r.patch, patches_per_volume=r.patches_per_volume,
            positive_fraction=r.positive_fraction, seed=r.seed))

    def val_dataloader(self) -> DataLoader:
        # whole volumes, every rank all of them (CPM does not decompose over ranks)
        return DataLoader(list(range(len(self.val_volumes))), batch_size=1)

    # -- steps -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, _idx):
        out = self.net(batch["image"])
        loss, parts = detection_loss(out, batch["heat"], batch["size"], batch["mask"],
                                     self.recipe.size_loss_weight)
        self.log("train_loss", loss, prog_bar=True, sync_dist=True)
        self.log("train_focal", parts["focal"], sync_dist=True)
        self.log("train_size_l1", parts["size_l1"], sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_dets = []

    def validation_step(self, batch, _idx):
        i = int(batch[0])
        pv = self.val_volumes[i]
        inf = self.recipe.inference
        prec = "bf16" if self.trainer.precision.startswith("bf16") else "fp32"
        out = sliding_window(self.net, torch.from_numpy(pv.volume.array)[None], inf.roi,
                             overlap=inf.overlap, batch_size=inf.batch_size, precision=prec)
        for d in decode(out, threshold=inf.threshold, top_k=inf.top_k):
            self._val_dets.append(Detection(str(i), d.zyx[2], d.zyx[1], d.zyx[0] * 1.0,
                                            d.probability))

    def on_validation_epoch_end(self) -> None:
        # match in voxel space scaled to mm (x, y, z) of the preprocessed grid
        nods, dets = [], []
        for i, pv in enumerate(self.val_volumes):
            sp = np.asarray(pv.volume.spacing)
            for c, d in zip(pv.centres_zyx, pv.diameters_mm):
                x, y, z = c[::-1] * sp
                nods.append(Nodule(str(i), float(x), float(y), float(z), float(d)))
        for d in self._val_dets:
            sp = np.asarray(self.val_volumes[int(d.scan)].volume.spacing)
            dets.append(Detection(d.scan, d.x * sp[0], d.y * sp[1], d.z * sp[2], d.probability))
        m = match([str(i) for i in range(len(self.val_volumes))], nods, dets)
        if m.num_nodules:
            fps, sens, _ = curve_of(m)
            score = cpm(fps, sens)
            s1 = float(sensitivity_at(fps, sens, [1.0])[0])
        else:
            score = s1 = 0.0
        self.log("val_cpm", score, prog_bar=True)
        self.log("val_sens_1fp", s1)
        self.log("val_detections", float(len(dets)))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr,
                                weight_decay=self.recipe.optimizer.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.recipe.max_epochs, 1))
        return {"optimizer": opt, "lr_scheduler": sched}


class LossRecorder(L.Callback):
    """Writes the rank-averaged training loss of every step to ``path`` (JSON list)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"].detach().float()
        if trainer.world_size > 1:
            loss = pl_module.all_gather(loss).mean()
        self.losses.append(float(loss))

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.losses))


class EpochSeed(L.Callback):
    """Tell the patch dataset the epoch (new random patches each epoch, reproducibly)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        dl = trainer.train_dataloader
        ds = getattr(dl, "dataset", None)
        if hasattr(ds, "set_epoch"):  # PatchDataset, CandidatePatchDataset
            ds.set_epoch(trainer.current_epoch)


__all__ = ["NoduleDetectionModule", "LossRecorder", "EpochSeed", "CPM_FP_RATES"]
