"""Training the two-stage detector's false-positive-reduction classifier (stage 2).

Samples are patches around (a) true nodule centres, shifted by up to a third of the radius,
and (b) stage-1 candidates farther than the nodule radius from every nodule — the hard
negatives (vessels, vessel crossings, pleura) stage 2 exists to reject.  Positives are
augmented with flips on all axes and in-plane quarter turns.  Every sample is a pure function
of (seed, epoch, index), so a DDP run over N processes sees the samples one process would.
Validation runs the full two-stage detector on the validation volumes and reports CPM.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hounsfield.evaluate.froc import Detection, Nodule, cpm, curve_of, match, sensitivity_at
from hounsfield.infer.device import candidate_device
from hounsfield.infer.precision import autocast
from hounsfield.models.candidates import Candidates
from hounsfield.models.detector import build_network
from hounsfield.models.two_stage import (cached_candidates, classify, extract_patch,
                                         select_detections, spec_key)
from hounsfield.train.data import PreparedVolume
from hounsfield.train.module import FiniteGradients, epoch_loader
from hounsfield.train.recipe import Augment, Recipe


def volume_candidates(volumes: list[PreparedVolume], recipe: Recipe,
                      cache_dir: Path | None, device: str | None = None) -> list[Candidates]:
    """Stage-1 candidates of prepared volumes (cached next to the preprocessed volumes);
    ``device``: the training device (the blob filter runs there when it is a GPU)."""
    out = []
    for pv in volumes:
        f = None
        if cache_dir is not None and pv.cache_key:
            f = cache_dir / f"cand-{spec_key(recipe.candidates)}" / f"{pv.cache_key}.npz"
        out.append(cached_candidates(pv.volume.array, pv.volume.spacing, recipe.candidates,
                                     hu_min=recipe.plan.hu_min, hu_max=recipe.plan.hu_max,
                                     cache_file=f, device=candidate_device(device)))
    return out


def label_candidates(pv: PreparedVolume, cands: Candidates) -> np.ndarray:
    """1 = within a nodule's radius (a LUNA16 hit), 0 = clear of every nodule (beyond 1.5 r),
    -1 = in between (left out of training)."""
    lab = np.zeros(len(cands), dtype=np.int8)
    if not len(pv.centres_zyx) or not len(cands):
        return lab
    sp = np.asarray(pv.volume.spacing[::-1])
    d = np.linalg.norm((cands.zyx[:, None, :] - pv.centres_zyx[None]) * sp, axis=2)
    r = pv.diameters_mm[None] / 2
    lab[(d <= 1.5 * r).any(axis=1)] = -1
    lab[(d <= r).any(axis=1)] = 1
    return lab


class CandidatePatchDataset(Dataset):
    """``patches_per_volume`` samples per volume per epoch; ``positive_fraction`` of them nodules."""

    def __init__(self, volumes: list[PreparedVolume], cands: list[Candidates],
                 patch: tuple[int, int, int], *, patches_per_volume: int,
                 positive_fraction: float, seed: int, augment: Augment | None = None,
                 hard_fraction: float = 0.0) -> None:
        self.volumes = volumes
        self.patch = tuple(int(v) for v in patch)
        self.n = len(volumes) * patches_per_volume
        self.pos_frac = positive_fraction
        self.seed = seed
        self.epoch = 0
        self.augment = augment or Augment()
        self.hard_fraction = hard_fraction
        self.hard: np.ndarray = np.zeros(0, dtype=np.int64)  # indices into self.neg
        self.pos = [(v, c, float(d)) for v, pv in enumerate(volumes)
                    for c, d in zip(pv.centres_zyx, pv.diameters_mm)]
        self.neg = []
        # per positive: the stage-1 candidates that hit it (centred as at inference)
        self.pos_cands: list[list[np.ndarray]] = [[] for _ in self.pos]
        first = 0
        for v, (pv, cs) in enumerate(zip(volumes, cands)):
            labels = label_candidates(pv, cs)
            self.neg += [(v, c) for c, lab in zip(cs.zyx, labels) if lab == 0]
            if len(pv.centres_zyx) and len(cs):
                sp = np.asarray(pv.volume.spacing[::-1])
                d = np.linalg.norm((cs.zyx[:, None, :] - pv.centres_zyx[None]) * sp, axis=2)
                for j, r in enumerate(pv.diameters_mm / 2):
                    self.pos_cands[first + j] = list(cs.zyx[d[:, j] <= r])
            first += len(pv.centres_zyx)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_hard(self, indices: np.ndarray) -> None:
        """The hard-negative pool (indices into the negatives), from :meth:`mine`."""
        self.hard = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        positive = bool(self.pos) and (rng.random() < self.pos_frac or not self.neg)
        aug = self.augment
        if positive:
            k = int(rng.integers(len(self.pos)))
            v, c, d = self.pos[k]
            if aug.candidate_positives and self.pos_cands[k] and \
                    rng.random() < aug.candidate_positives:
                centre = np.asarray(self.pos_cands[k][rng.integers(len(self.pos_cands[k]))])
            else:
                sp = np.asarray(self.volumes[v].volume.spacing[::-1])
                shift = rng.uniform(-1, 1, 3) * np.minimum(d / 3 / sp, 2.0)
                centre = np.asarray(c) + shift
        else:
            if self.hard_fraction and len(self.hard) and rng.random() < self.hard_fraction:
                v, c = self.neg[int(self.hard[rng.integers(len(self.hard))])]
            else:
                v, c = self.neg[rng.integers(len(self.neg))]
            centre = np.asarray(c) + rng.integers(-1, 2, 3)
        img = extract_patch(self.volumes[v].volume.array, centre, self.patch)
        for ax in range(3):
            if rng.random() < 0.5:
                img = img[(slice(None),) * ax + (slice(None, None, -1),)]
        if self.patch[1] == self.patch[2]:
            img = np.rot90(img, int(rng.integers(4)), axes=(1, 2))
        if aug.intensity:
            img = img * np.float32(1 + rng.normal(0, aug.intensity)) + \
                np.float32(rng.normal(0, aug.intensity / 4))
        if aug.noise:
            img = img + rng.normal(0, aug.noise, img.shape).astype(np.float32)
        return {"image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None],
                "label": torch.tensor(float(positive))}

    def mine(self, net: torch.nn.Module, *, sample: int, pool: int, seed: int,
             batch_size: int = 256) -> np.ndarray:
        """Score ``sample`` random negatives plus the current hard pool with ``net``; return the
        ``pool`` highest-scoring (deterministic given the seed and the weights, so every DDP
        rank finds the same pool)."""
        rng = np.random.default_rng([seed, self.epoch, 7919])
        n = len(self.neg)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        idx = np.union1d(rng.choice(n, size=min(sample, n), replace=False), self.hard)
        scores = np.empty(len(idx))
        vols = np.array([self.neg[int(i)][0] for i in idx])
        for v in np.unique(vols):  # one volume's negatives at a time
            sel = np.nonzero(vols == v)[0]
            centres = np.array([self.neg[int(idx[j])][1] for j in sel])
            scores[sel] = classify(net, self.volumes[v].volume.array, centres, self.patch,
                                   batch_size=batch_size)
        order = np.argsort(-scores, kind="stable")[:pool]
        return idx[order]


def detect(net, pv: PreparedVolume, cands: Candidates, recipe: Recipe,
           precision: str = "fp32") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-stage detections of one prepared volume: (zyx, diameter_mm, probability)."""
    if not len(cands):
        return np.zeros((0, 3)), np.zeros(0), np.zeros(0)
    with autocast(precision, next(net.parameters()).device):  # type: ignore[arg-type]
        probs = classify(net, pv.volume.array, cands.zyx, recipe.patch,
                         batch_size=recipe.inference.batch_size)
    keep = select_detections(cands.zyx, cands.diameter_mm, probs,
                             np.asarray(pv.volume.spacing[::-1]),
                             threshold=recipe.inference.threshold, top_k=recipe.inference.top_k)
    return cands.zyx[keep], cands.diameter_mm[keep], probs[keep]


class CandidateClassifierModule(FiniteGradients, L.LightningModule):
    """Stage-2 classifier: BCE on candidate patches; validation CPM of the whole detector."""

    def __init__(self, recipe: Recipe, train_volumes: list[PreparedVolume],
                 val_volumes: list[PreparedVolume], *, lr: float | None = None,
                 cache_dir: Path | None = None, device: str | None = None) -> None:
        super().__init__()
        self.recipe = recipe
        self.net = build_network(recipe.network)
        self.train_volumes = train_volumes
        self.val_volumes = val_volumes
        self.train_cands = volume_candidates(train_volumes, recipe, cache_dir, device)
        self.val_cands = volume_candidates(val_volumes, recipe, cache_dir, device)
        self.lr = lr or recipe.optimizer.lr
        self._val_dets: list[Detection] = []
        self._hard = np.zeros(0, dtype=np.int64)
        self.save_hyperparameters({"recipe": recipe.model_dump(mode="json"), "lr": self.lr})

    def train_dataloader(self) -> DataLoader:
        r = self.recipe
        self._train_ds = CandidatePatchDataset(
            self.train_volumes, self.train_cands, r.patch,
            patches_per_volume=r.patches_per_volume, positive_fraction=r.positive_fraction,
            seed=r.seed, augment=r.augment, hard_fraction=r.hard_negatives.fraction)
        self._train_ds.set_hard(self._hard)
        return epoch_loader(self, self._train_ds)

    def on_train_epoch_start(self) -> None:
        hn = self.recipe.hard_negatives
        ds = getattr(self, "_train_ds", None)
        ep = self.current_epoch
        if not hn.fraction or ds is None or ep == 0 or ep % hn.every_n_epochs:
            return
        was = self.net.training
        self.net.eval()
        ds.set_epoch(ep)
        self._hard = ds.mine(self.net, sample=hn.sample, pool=hn.pool, seed=self.recipe.seed,
                             batch_size=self.recipe.inference.batch_size)
        ds.set_hard(self._hard)
        self.net.train(was)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(list(range(len(self.val_volumes))), batch_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, _idx):
        logit = self.net(batch["image"]).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, batch["label"])
        self.log("train_loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_dets = []

    def validation_step(self, batch, _idx):
        i = int(batch[0])
        pv = self.val_volumes[i]
        prec = "bf16" if str(self.trainer.precision).startswith("bf16") else "fp32"
        self.net.eval()
        zyx, _d, p = detect(self.net, pv, self.val_cands[i], self.recipe, prec)
        sp = np.asarray(pv.volume.spacing)
        for c, s in zip(zyx, p):
            x, y, z = c[::-1] * sp
            self._val_dets.append(Detection(str(i), float(x), float(y), float(z), float(s)))

    def on_validation_epoch_end(self) -> None:
        nods = []
        for i, pv in enumerate(self.val_volumes):
            sp = np.asarray(pv.volume.spacing)
            for c, d in zip(pv.centres_zyx, pv.diameters_mm):
                x, y, z = c[::-1] * sp
                nods.append(Nodule(str(i), float(x), float(y), float(z), float(d)))
        m = match([str(i) for i in range(len(self.val_volumes))], nods, self._val_dets)
        if m.num_nodules:
            fps, sens, _ = curve_of(m)
            score, s1 = cpm(fps, sens), float(sensitivity_at(fps, sens, [1.0])[0])
        else:
            score = s1 = 0.0
        self.log("val_cpm", score, prog_bar=True)
        self.log("val_sens_1fp", s1)
        self.log("val_detections", float(len(self._val_dets)))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr,
                                weight_decay=self.recipe.optimizer.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.recipe.max_epochs, 1))
        return {"optimizer": opt, "lr_scheduler": sched}
