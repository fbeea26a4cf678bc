"""The training loop behind ``sigrl train``: one process, or torchrun + DistributedDataParallel.

Determinism and resume: each epoch's sample order comes from a generator seeded by (seed, epoch), and
the global RNG is reseeded at every epoch start identically on every process, so the GMC dropout masks
match across DDP ranks and a single-process run on the same global batch. ``last.pt`` holds the model,
optimizer, step, RNG state, the frozen teacher and the EM_APL pseudo-labels; resuming skips the batches
already consumed in the current epoch and continues exactly (bit-for-bit on CPU with ``workers=0``; with
random augmentation in worker processes, a resume mid-epoch redraws the augmentations of that epoch).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from sigrl.checkpoint import model_payload, read_checkpoint, save_atomic
from sigrl.data import build_dataset, build_transform
from sigrl.data.common import data_loader
from sigrl.evaluation import evaluate_split, predict
from sigrl.factory import create_model
from sigrl.losses import PseudoNegativeLabeler, distillation_loss, ranking_loss, spml_loss
from sigrl.model import SigRL
from sigrl.params import param_groups
from sigrl.training.recipes import TrainConfig, check_config


class TrainingModule(nn.Module):
    """What DDP wraps: the model plus the optional learnable ranking-loss scale, so every trainable tensor syncs."""

    def __init__(self, model: SigRL, rank_scale: float | None) -> None:
        super().__init__()
        self.model = model
        self.rank_scale = nn.Parameter(torch.tensor(float(rank_scale))) if rank_scale else None

    def forward(self, images: torch.Tensor, token_ids: torch.Tensor | None,
                label_emb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(images, token_ids, label_emb=label_emb, return_global=True)


def lr_factor(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float,
              schedule: str = "cosine") -> float:
    """Linear warm-up to ``lr``, then cosine per iteration down to ``min_lr`` (``schedule`` "cosine") or
    ``lr`` unchanged ("constant"); returned as a fraction of ``lr``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))) / lr


def epoch_batches(num_samples: int, batch_size: int, epoch: int, seed: int, rank: int, world: int) -> list[list[int]]:
    """This process's share of every global batch of the epoch (the last incomplete batch is dropped)."""
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    per_rank = batch_size // world
    return [order[start + rank * per_rank: start + (rank + 1) * per_rank]
            for start in range(0, num_samples - batch_size + 1, batch_size)]


def _setup_distributed(device: str | None) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if device is None or (use_cuda and world > 1):
        device = f"cuda:{local_rank}" if use_cuda else "cpu"
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))
    return rank, world, torch.device(device)


def _build_model(cfg: TrainConfig) -> SigRL:
    overrides: dict[str, Any] = {"coop_n_ctx": cfg.coop_n_ctx}
    if cfg.class_chunk:
        overrides["class_chunk"] = cfg.class_chunk
    model = create_model(cfg.model, pretrained=cfg.pretrained, **overrides)
    if cfg.coop_n_ctx > 0:  # CoOp: only the context vectors learn
        model.requires_grad_(False)
        assert model.prompt_context is not None  # made by coop_n_ctx > 0
        model.prompt_context.requires_grad_(True)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    return model.train()


def _dataset_kwargs(cfg: TrainConfig, split: str) -> dict[str, Any]:
    """Reader options of the configured dataset for ``split`` (see :func:`sigrl.data.build_dataset`)."""
    if cfg.data == "synthetic":
        return {"num_images": cfg.synthetic_train_images} if split == "train" and cfg.synthetic_train_images else {}
    return {"image_root": cfg.image_root, **({} if cfg.val_fraction is None else {"val_fraction": cfg.val_fraction})}


def _task_loss(cfg: TrainConfig, scores: torch.Tensor, batch: dict, scale: torch.Tensor | None,
               labeler: PseudoNegativeLabeler | None) -> torch.Tensor:
    labels = batch["labels"].to(scores.device)
    if cfg.loss == "rank":
        return ranking_loss(scores, labels, scale)
    extra: dict[str, Any] = {}
    if cfg.loss == "iun":
        extra["true_labels"] = (batch["true_labels"] > 0).float().to(scores.device)
    if labeler is not None:
        index = batch["index"].to(scores.device)
        extra.update(pseudo_negatives=labeler.targets(index), soft_target=labeler.soft_targets(index))
    return spml_loss(cfg.loss, scores, (labels > 0).float(), alpha=cfg.spml_alpha, beta=cfg.spml_beta,
                     logit_scale=cfg.spml_logit_scale, **extra)


class Trainer:
    """One training run: builds model, teacher, data and optimiser from a :class:`TrainConfig`, then
    :meth:`fit` runs epochs, validates on rank 0 and writes ``last.pt`` / ``best.pt`` atomically."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.rank, self.world, self.device = _setup_distributed(cfg.device)
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} must divide evenly over {self.world} processes")
        self.out = Path(cfg.out)
        torch.manual_seed(cfg.seed)
        self.model = _build_model(cfg)
        image_size = self.model.config.vision_cfg["image_size"]
        self.train_set = build_dataset(cfg.data, "train", cfg.data_root, image_size, **_dataset_kwargs(cfg, "train"))
        self.validates = cfg.val_fraction != 0  # 0: train on every training image, keep the last epoch
        self.val_set = (build_dataset(cfg.data, "val", cfg.data_root, image_size, **_dataset_kwargs(cfg, "val"))
                        if self.rank == 0 and self.validates else None)
        self.vocabulary = self.train_set.vocabulary
        self.token_ids = self.model.tokenize(self.vocabulary).to(self.device)
        use_teacher = cfg.distill_weight > 0 and cfg.coop_n_ctx == 0
        self.teacher = self.model.make_teacher().to(self.device) if use_teacher else None
        self.module = TrainingModule(self.model, cfg.rank_scale if cfg.loss == "rank" else None).to(self.device)
        self.optimizer = self._optimizer()
        self.labeler, self.scoring_set = None, None
        if cfg.loss == "em_apl":  # pseudo-labels come from scores of the training images without augmentation
            self.labeler = PseudoNegativeLabeler((self.train_set.labels > 0).float(), cfg.epochs, cfg.spml_warmup,
                                                 logit_scale=cfg.spml_logit_scale)
            self.scoring_set = build_dataset(cfg.data, "train", cfg.data_root, image_size,
                                             transform=build_transform(image_size, is_training=False),
                                             **_dataset_kwargs(cfg, "train"))
        self.steps_per_epoch = len(self.train_set) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"training set of {len(self.train_set)} images is smaller than one batch of "
                             f"{cfg.batch_size}")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.step, self.best = 0, -math.inf
        self.history: list[dict[str, float]] = []
        self.rng_state: dict[str, torch.Tensor | None] | None = None
        self.losses: list[float] = []  # training losses since the last evaluation (for metrics.jsonl)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and self.device.type == "cuda")

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        groups = param_groups(self.model, cfg.lr, cfg.weight_decay, cfg.layer_decay)
        if self.module.rank_scale is not None:
            groups.append({"params": [self.module.rank_scale], "lr": cfg.lr, "lr_scale": 1.0, "weight_decay": 0.0,
                           "name": "rank_scale"})
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=cfg.lr)
        return torch.optim.Adam([{**g, "weight_decay": 0.0} for g in groups], lr=cfg.lr)

    # ----------------------------------------------------------------------------- state
    def _rng(self) -> dict[str, torch.Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {"cpu": torch.get_rng_state(), "cuda": cuda}

    def _set_rng(self, state: dict[str, torch.Tensor | None]) -> None:
        cpu = state["cpu"]
        assert cpu is not None, "a checkpoint's RNG state always has the CPU generator"
        torch.set_rng_state(cpu)
        if state["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def resume(self) -> None:
        """Restore everything from ``out/last.pt``."""
        state = read_checkpoint(self.out / "last.pt")
        self.model.load_state_dict(state["model"])
        extra = state["train"]
        self.optimizer.load_state_dict(extra["optimizer"])
        if self.module.rank_scale is not None:
            self.module.rank_scale.data.copy_(extra["rank_scale"])
        if self.teacher is not None:
            self.teacher.load_state_dict(extra["teacher"])
        if self.labeler is not None:
            self.labeler.load_state_dict(extra["labeler"])
        self.step, self.best, self.history, self.rng_state = (extra["step"], extra["best_val_mAP"], extra["history"],
                                                              extra["rng"])

    def save(self, name: str, metrics: dict[str, float], full: bool) -> None:
        """Write a checkpoint atomically; ``full`` adds what ``--resume`` needs."""
        cfg = self.cfg
        extra: dict[str, Any] = {"epoch": self.step // self.steps_per_epoch, "step": self.step, "val": metrics,
                                 "data": {"name": cfg.data, "root": cfg.data_root,
                                          "image_root": cfg.image_root, "val_fraction": cfg.val_fraction}}
        if full:
            scale = self.module.rank_scale
            extra["train"] = {
                "config": asdict(replace(cfg, max_steps=None)), "optimizer": self.optimizer.state_dict(),
                "step": self.step, "best_val_mAP": self.best, "history": self.history, "rng": self.rng_state,
                "rank_scale": None if scale is None else scale.detach().cpu(),
                "teacher": None if self.teacher is None else self.teacher.state_dict(),
                "labeler": None if self.labeler is None else self.labeler.state_dict()}
        save_atomic(model_payload(self.model, self.vocabulary, **extra), self.out / name)

    # -------------------------------------------------------------------------- training
    def train_step(self, network: nn.Module, batch: dict, label_emb: torch.Tensor | None) -> float:
        """One optimiser step on this process's share of a global batch; returns the loss."""
        cfg = self.cfg
        factor = lr_factor(self.step, self.total_steps, self.warmup_steps, cfg.lr, cfg.min_lr, cfg.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * group["lr_scale"] * factor
        images = batch["image"].to(self.device, non_blocking=True)
        with self.autocast:
            scores, global_feat = network(images, self.token_ids if label_emb is None else None, label_emb)
            loss = _task_loss(cfg, scores.float(), batch, self.module.rank_scale, self.labeler)
            if self.teacher is not None:
                with torch.no_grad():
                    target = self.teacher(images)
                loss = loss + cfg.distill_weight * distillation_loss(global_feat.float(), target.float())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss.item()

    def _epoch_loader(self, epoch: int, offset: int) -> DataLoader:
        batches = epoch_batches(len(self.train_set), self.cfg.batch_size, epoch, self.cfg.seed, self.rank,
                                self.world)[offset:]
        return data_loader(self.train_set, batch_sampler=batches, num_workers=self.cfg.workers,
                           pin_memory=self.device.type == "cuda",
                           generator=torch.Generator().manual_seed(self.cfg.seed + epoch))

    def _end_of_round(self, epoch: int) -> dict[str, float]:
        """Pseudo-labels after a full epoch (EM_APL), validation and checkpoints on rank 0.

        Without a validation split, ``best.pt`` is rewritten every round and so ends as the last epoch.
        """
        cfg = self.cfg
        if self.labeler is not None and self.step % self.steps_per_epoch == 0:  # scored in fp32, never autocast
            assert self.scoring_set is not None  # built with the labeler
            scores = predict(self.model, self.scoring_set, {"train": self.vocabulary}, cfg.eval_batch_size,
                             self.device, precision="fp32")["train"]
            self.labeler.update(epoch + 1, torch.from_numpy(scores))
        self.rng_state = self._rng()  # before validation: its DataLoader draws from the global RNG
        metrics: dict[str, float] = {}
        if self.rank == 0:
            if self.validates:
                assert self.val_set is not None  # rank 0 builds it when it validates
                metrics = evaluate_split(self.model, self.val_set, cfg.eval_batch_size, self.device,
                                         precision=cfg.eval_precision)
                self.history.append({"step": self.step, **metrics})
                print(f"step {self.step}: val mAP {metrics['mAP']:.2f}  F1@3 {metrics['F1@3']:.2f}", flush=True)
            if not self.validates or metrics["mAP"] > self.best:
                self.best = metrics.get("mAP", self.best)
                self.save("best.pt", metrics, full=False)
            self.save("last.pt", metrics, full=True)
            self._log_metrics(epoch, metrics)
        if self.world > 1:
            dist.barrier()
        return metrics

    def _log_metrics(self, epoch: int, metrics: dict[str, float]) -> None:
        """Append one JSON line per evaluation to ``out/metrics.jsonl`` (step, epoch, mean training loss, val)."""
        mean_loss = sum(self.losses) / len(self.losses) if self.losses else None
        record = {"step": self.step, "epoch": epoch + 1, "train_loss": mean_loss,
                  "lr": self.optimizer.param_groups[0]["lr"], "best_val_mAP": self.best, "val": metrics,
                  "time": time.time()}
        with open(self.out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.losses = []

    def fit(self) -> dict[str, Any]:
        """Run until ``epochs`` (or ``max_steps``); returns ``{"best_val_mAP", "val", "steps"}``
        (``best_val_mAP`` is None and ``val`` empty without a validation split)."""
        cfg = self.cfg
        network = (DistributedDataParallel(self.module, device_ids=[self.device.index] if self.device.type == "cuda"
                                           else None) if self.world > 1 else self.module)
        label_emb = None
        if cfg.coop_n_ctx == 0:  # frozen text tower: encode the training vocabulary once
            with torch.no_grad():
                label_emb = self.model.encode_text(self.token_ids)
        stop_at = min(cfg.max_steps if cfg.max_steps is not None else self.total_steps, self.total_steps)
        metrics: dict[str, float] = {}
        show = cfg.progress and self.rank == 0  # a bar in a terminal, else a line every log_every steps
        while self.step < stop_at:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            torch.manual_seed(cfg.seed + 1_000 * (epoch + 1))  # identical on every rank: same GMC dropout
            if offset and self.rng_state is not None:
                self._set_rng(self.rng_state)
            loader = self._epoch_loader(epoch, offset)
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", dynamic_ncols=True,
                       disable=not (show and sys.stderr.isatty()))
            self.module.train()
            for batch in bar:
                started = time.perf_counter()
                loss = self.train_step(network, batch, label_emb)
                self.losses.append(loss)
                rate = len(batch["image"]) * self.world / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
                if show and bar.disable and self.step % cfg.log_every == 0:  # logs, CI, cluster jobs
                    print(f"step {self.step}/{stop_at} (epoch {epoch + 1}/{cfg.epochs}): loss {loss:.4f}, "
                          f"{rate:.0f} images/s", flush=True)
                if self.step >= stop_at:
                    break
            metrics = self._end_of_round(epoch)
        return {"best_val_mAP": self.best if self.validates else None, "val": metrics, "steps": self.step}


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train per ``cfg``, writing ``out/last.pt`` every epoch and ``out/best.pt`` on a better validation mAP.

    Returns ``{"best_val_mAP", "val", "steps"}``. With ``resume``, continues from ``out/last.pt``.
    ``cfg`` is checked first (:func:`sigrl.training.recipes.check_config`).
    """
    check_config(cfg, resume=resume)
    trainer = Trainer(cfg)
    if resume:
        trainer.resume()
    return trainer.fit()
