"""The training loop of any model (STCN's, DESIGN.md §2-3) with the two-shot extension point.

One iteration: the next batch from the seeded stream (max skip by the curriculum), the clip
forward pass (:mod:`twoshot.train.forward`) under AMP on CUDA, the regime's targets, the
bootstrapped CE (:mod:`twoshot.train.loss`), backward, optional gradient clipping, Adam step,
MultiStepLR step, the regime's ``after_step``. BatchNorm is frozen: the network stays in eval
mode throughout, as in STCN (its affine parameters still train).

Files in ``out_dir`` (rank 0 writes them, atomically):

- ``checkpoint.pt``: the training checkpoint every ``save_every`` iterations and at the end:
  ``{it, network, optimizer, scheduler, scaler, rng, stream, curriculum, mode, stage,
  world_size, config}`` (``it`` = completed iterations; ``network`` is a raw state dict,
  so :func:`twoshot.model.checkpoint.read_state_dict` reads it as the published checkpoints;
  ``mode``: the regime's ``extra_state()``, a name kept so that older checkpoints resume);
- ``final.pth``: the final weights in the published checkpoints' format (:func:`save_weights`);
- ``config.json``: the configuration of the run; ``log.jsonl`` and ``tensorboard/``: logs.

Iterations are counted from 1 in messages ("iteration 7" is the 7th optimisation step);
the schedules (bootstrap, learning rate, curriculum) receive the 0-based step index as STCN's.
"""

from __future__ import annotations

import inspect
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from twoshot.config import Config, TrainConfig, to_dict
from twoshot.config_checks import check_stage, check_train_config
from twoshot.data.batch import ClipBatch
from twoshot.data.sampling import max_skip_at
from twoshot.devices import resolve_device
from twoshot.errors import UserError
from twoshot.fsutil import save_torch, write_json
from twoshot.model.checkpoint import check_state_dict, load_checkpoint, save_weights
from twoshot.model.interface import VOSModel
from twoshot.model.registry import build_model
from twoshot.train import distributed as dist_utils
from twoshot.train.distributed import DistContext
from twoshot.train.forward import ClipModel, ClipOutput, forward_batch
from twoshot.train.loader import ClipStream
from twoshot.train.logger import TrainLogger, accumulate_window, clip_grid
from twoshot.train.loss import LossResult, iou_counts
from twoshot.train.objectives import Objective, objective_for, scheduler_for
from twoshot.train.regimes import SupervisedRegime, TrainingRegime

STAGES = ("static", "main")
CHECKPOINT_NAME = "checkpoint.pt"
FINAL_NAME = "final.pth"


@dataclass
class StepResult:
    """What one :meth:`Trainer.step` did: the batch with the targets the loss used, the
    predictions, the loss (and its value), the gradient norm when clipping, the lr."""

    batch: ClipBatch
    output: ClipOutput
    loss: LossResult
    loss_value: float
    grad_norm: torch.Tensor | None
    lr: float


class TrainingDiverged(UserError):
    """The loss (or the weights) became NaN/inf; the last good checkpoint is kept."""


def stage_config(config: Config, stage: str) -> TrainConfig:
    """The TrainConfig section of ``stage`` (``static`` or ``main``); UserError otherwise."""
    if stage not in STAGES:
        raise UserError(f"unknown training stage {stage!r}; choose one of: {', '.join(STAGES)}")
    return getattr(config, stage)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


class Trainer:
    """One training run of ``stage`` on ``dataset`` (see :func:`train` for the arguments).

    Construction sets up the process group (under torchrun), the model, optimiser, scheduler,
    scaler and data stream, and restores a checkpoint when ``resume``; :meth:`run` trains.
    ``model`` is the bare model (the same object DDP wraps).
    """

    def __init__(
        self,
        config: Config,
        stage: str,
        dataset: Dataset[Any] | None,
        out_dir: str | Path,
        init: str | Path | None = None,
        resume: bool = False,
        regime: TrainingRegime | None = None,
        device: str | torch.device = "auto",
        progress: bool = True,
    ) -> None:
        self.config = config
        self.stage = stage
        self.cfg = stage_config(config, stage)
        # Loading the config checked each section; what this run adds: lr_steps within
        # iterations (and checks for configs built without load_config).
        check_train_config(self.cfg, stage, config.model.kind)
        check_stage(config, stage)
        self.out_dir = Path(out_dir)
        self.regime: TrainingRegime = regime if regime is not None else SupervisedRegime()
        self.dataset = dataset
        self.progress = progress
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME
        self.final_path = self.out_dir / FINAL_NAME
        if not resume and self.checkpoint_path.exists():
            raise UserError(
                f"{self.out_dir} already holds a training checkpoint "
                f"({CHECKPOINT_NAME}); pass --resume to continue it or choose "
                "another --out"
            )
        if resume and not self.checkpoint_path.exists():
            raise UserError(f"--resume: no {CHECKPOINT_NAME} in {self.out_dir} to resume from")
        cfg = self.cfg
        self.ctx: DistContext = dist_utils.setup(resolve_device(device))
        self.device = self.ctx.device
        self.use_amp = bool(cfg.amp and self.device.type == "cuda")
        try:
            self._build(init, resume)
        except BaseException:
            dist_utils.teardown(self.ctx)  # a bad --init must not leave the group open
            raise

    def _build(self, init: str | Path | None, resume: bool) -> None:
        """Model, DDP wrapper, optimiser, scheduler, scaler, stream; the checkpoint if resuming."""
        cfg, config = self.cfg, self.config
        seed_everything(cfg.seed)  # same seed on every rank: identical initial weights
        self.model: VOSModel = build_model(config.model)
        # The model kind's loss, optimiser and loss scale (twoshot.train.objectives).
        self.objective: Objective = objective_for(self.model.kind, cfg)
        self.objective.configure(self.model)
        if init is not None and not resume:
            load_checkpoint(init, self.model)
        self.model.to(self.device)
        # STCN freezes BatchNorm (eval mode: pretrained running statistics never change). A
        # model trained from scratch (the tiny preset, no ImageNet weights) needs batch
        # statistics to train at all: freeze_bn false keeps BatchNorm in training mode.
        self.model.train(not cfg.freeze_bn)
        clip_model = ClipModel(self.model)
        self.net: torch.nn.Module = clip_model
        if self.ctx.distributed:
            # Eval-mode BatchNorm: buffers never change, so they need no per-step sync (the
            # initial weights and buffers are identical on every rank: same seed, same init).
            # Training-mode BatchNorm: rank 0's running statistics are broadcast each step.
            sync: dict[str, Any] = {}
            if cfg.freeze_bn:
                sync = (
                    {"forward_sync_buffers": False}
                    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                    else {"broadcast_buffers": False}
                )
            self.net = DistributedDataParallel(
                clip_model, device_ids=[self.device] if self.device.type == "cuda" else None, **sync
            )
        self.optimizer = self.objective.optimizer(self.model, self.use_amp)
        self.scheduler = scheduler_for(self.objective, self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler(
            self.device.type, init_scale=self.objective.grad_scale, enabled=self.use_amp
        )
        self.stream = ClipStream(
            cfg.batch_size,
            cfg.num_workers,
            cfg.seed,
            self.ctx.rank,
            self.ctx.world,
            self.max_skip,
            self.device.type == "cuda",
        )
        self.it = 0
        self.last_saved: int | None = None
        self.regime.start(self.model, self.device)
        if resume:
            self._load(self.checkpoint_path)

    # ------------------------------------------------------------------------------------
    # schedules

    def max_skip(self, it: int) -> int:
        """The curriculum's max skip for 0-based iteration ``it``."""
        return max_skip_at(it, self.cfg.iterations, self.cfg.max_skip_values, self.cfg.max_skip_fractions)

    def dataset_at(self, it: int) -> Dataset[Any]:
        """The dataset of iteration ``it``: the regime's, else the stage's."""
        chosen = self.regime.dataset(it)
        if chosen is None:
            chosen = self.dataset
        if chosen is None:
            raise UserError("no training dataset: pass one, or a TrainingRegime that provides it")
        return chosen

    # ------------------------------------------------------------------------------------
    # the loop

    def run(self) -> Path:
        """Train until ``iterations``; returns the path of the final weights (``final.pth``).

        Raises TrainingDiverged on a non-finite loss (the last checkpoint is left as it was)
        and UserError for bad data.
        """
        cfg, ctx = self.cfg, self.ctx
        total = cfg.iterations
        if ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_json(
                self.out_dir / "config.json",
                {
                    "stage": self.stage,
                    "world_size": ctx.world,
                    "global_batch_size": cfg.batch_size * ctx.world,
                    "mode": getattr(self.regime, "name", type(self.regime).__name__),
                    "config": to_dict(self.config),
                },
            )
        logger = TrainLogger(self.out_dir, ctx.is_main, self.it, total, self.progress)
        sums: dict[str, torch.Tensor] = {}
        steps_in_window, window_start = 0, time.perf_counter()
        try:
            while self.it < total:
                it = self.it
                batch = self.stream.next_batch(self.dataset_at(it), it)
                done = self.step(batch.to(self.device), it)
                batch, output, loss, lr = done.batch, done.output, done.loss, done.lr

                accumulate_window(
                    sums,
                    loss,
                    iou_counts(output.probs.detach(), batch.cls_gt, batch.selector),
                    done.grad_norm,
                )
                steps_in_window += 1
                logger.step(done.loss_value)
                if self.it % cfg.log_every == 0 or self.it == total:
                    elapsed = time.perf_counter() - window_start
                    scalars = self._window_scalars(sums, steps_in_window, elapsed, loss.p, lr)
                    logger.scalars(self.it, scalars)
                    sums, steps_in_window, window_start = {}, 0, time.perf_counter()
                if ctx.is_main and self.it % cfg.image_every == 0:
                    logger.image(
                        self.it,
                        "train/clips",
                        clip_grid(batch.rgb, batch.cls_gt, output.probs.detach()),
                    )
                if self.it % cfg.save_every == 0 or self.it == total:
                    self._save(total)
            if ctx.is_main:
                save_weights(self.model, self.final_path)
            dist_utils.barrier(ctx)
        finally:
            self.stream.close()
            logger.close()
        return self.final_path

    def step(self, batch: ClipBatch, it: int) -> StepResult:
        """One optimisation step of 0-based iteration ``it`` on ``batch`` (on the device).

        The loop body of :meth:`run`: forward (under AMP on CUDA), the regime's targets, the
        loss, backward, optional gradient clipping, optimiser, scaler and scheduler steps, the
        regime's ``after_step``; then ``self.it = it + 1``. Raises TrainingDiverged on a
        non-finite loss. Returns the batch with the targets the loss used, the predictions,
        the loss and the learning rate of the step.
        """
        cfg = self.cfg
        with torch.autocast(self.device.type, enabled=self.use_amp):
            output = forward_batch(self.net, batch)
            with torch.no_grad():
                batch = self.regime.prepare_targets(batch, output, it)
        loss = self.objective.loss(output, batch, it)
        loss_value = self._check_finite(loss.total, it, cfg.iterations)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss.total).backward()
        grad_norm = None
        if cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        lr = max(group["lr"] for group in self.optimizer.param_groups)  # Cutie: backbone at x0.1
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.regime.after_step(self.model, it)
        self.it = it + 1
        return StepResult(batch, output, loss, loss_value, grad_norm, lr)

    def close(self) -> None:
        """Leave the process group (when this trainer created it)."""
        self.stream.close()
        dist_utils.teardown(self.ctx)

    # ------------------------------------------------------------------------------------
    # helpers

    def _check_finite(self, loss: torch.Tensor, it: int, total: int) -> float:
        """The loss as a float; TrainingDiverged (on every rank) if any rank's is not finite."""
        value = float(loss.detach())
        flag = torch.tensor(
            [1.0 if np.isfinite(value) else 0.0], device=self.device if self.ctx.distributed else "cpu"
        )
        if float(dist_utils.all_reduce(flag, self.ctx, "min")) < 1.0:
            shown = value if not np.isfinite(value) else "not finite on another process"
            raise TrainingDiverged(
                f"training stopped: the loss is {shown} at iteration {it + 1} of {total}; {self._last_good()}"
            )
        return value

    def _last_good(self) -> str:
        if self.last_saved is not None or self.checkpoint_path.exists():
            where = f" (iteration {self.last_saved})" if self.last_saved is not None else ""
            return (
                f"the last good checkpoint is {self.checkpoint_path}{where}; lower the learning "
                "rate or check the data, then continue with --resume"
            )
        return "no checkpoint was saved yet; lower the learning rate or check the data"

    def _window_scalars(
        self, sums: dict[str, torch.Tensor], steps: int, elapsed: float, p: float, lr: float
    ) -> dict[str, float]:
        """Means over the logging window, pooled over processes (every rank must call)."""
        names = sorted(sums)
        packed = torch.stack(
            [sums[n].float().to(self.device) for n in names]
            + [torch.tensor(float(steps), device=self.device)]
        )
        packed = dist_utils.all_reduce(packed, self.ctx).cpu()
        totals = dict(zip(names, packed[:-1].tolist()))
        count = max(packed[-1].item(), 1.0)
        scalars: dict[str, float] = {}
        for name, value in totals.items():
            if name.startswith("loss") or name == "grad_norm":
                scalars[f"train/{name}"] = value / count
        if totals.get("u", 0) > 0:
            scalars["train/iou"] = totals["i"] / totals["u"]
        if totals.get("sec_u", 0) > 0:
            scalars["train/sec_iou"] = totals["sec_i"] / totals["sec_u"]
        scalars["train/p"] = p
        scalars["train/lr"] = lr
        scalars["train/max_skip"] = float(self.max_skip(max(self.it - 1, 0)))
        scalars["perf/it_per_s"] = steps / elapsed if elapsed > 0 else 0.0
        if self.use_amp:
            scalars["train/amp_scale"] = float(self.scaler.get_scale())
        for name, value in self.regime.log_scalars().items():
            scalars[f"mode/{name}"] = float(value)
        return scalars

    def _rng_state(self) -> dict[str, Any]:
        py = random.getstate()
        npy: Any = np.random.get_state()  # the legacy tuple (its stubs also allow a dict)
        state: dict[str, Any] = {
            "python": [py[0], list(py[1]), py[2]],
            "numpy": [
                npy[0],
                torch.from_numpy(npy[1].astype(np.int64)),
                int(npy[2]),
                int(npy[3]),
                float(npy[4]),
            ],
            "torch": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        npy = state["numpy"]
        np.random.set_state((npy[0], npy[1].numpy().astype(np.uint32), npy[2], npy[3], npy[4]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def _save(self, total: int) -> None:
        """Write the training checkpoint (rank 0); every rank takes part in the RNG gather."""
        rng_states = dist_utils.all_gather_objects(self._rng_state(), self.ctx)
        if not self.ctx.is_main:
            return
        bad = [name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TrainingDiverged(
                f"training stopped: non-finite weights after iteration {self.it} of {total} "
                f"({len(bad)} tensors, e.g. {bad[0]}); {self._last_good()}"
            )
        save_torch(
            self.checkpoint_path,
            {
                "it": self.it,
                "network": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_states,
                "stream": self.stream.state_dict(),
                "curriculum": {"max_skip": self.max_skip(self.it)},
                "mode": self.regime.extra_state(),
                "stage": self.stage,
                "world_size": self.ctx.world,
                "config": to_dict(self.cfg),
            },
        )
        self.last_saved = self.it

    def _load(self, path: Path) -> None:
        """Restore everything :meth:`_save` wrote."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            keys = ("it", "network", "optimizer", "scheduler", "scaler", "rng", "stream", "mode")
            missing = [k for k in keys if k not in state]
        except Exception as exc:  # torch.load raises many types on a damaged file
            raise UserError(f"{path}: not a readable training checkpoint ({exc})") from exc
        if missing:
            raise UserError(f"{path}: not a twoshot training checkpoint (missing {', '.join(missing)})")
        if state.get("stage") not in (None, self.stage):
            raise UserError(f"{path}: a checkpoint of stage {state['stage']!r}, not {self.stage!r}")
        check_state_dict(self.model, state["network"], str(path))
        self.model.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.regime.load_extra_state(state["mode"])
        rng = state["rng"]
        self._set_rng_state(rng[self.ctx.rank] if self.ctx.rank < len(rng) else rng[0])
        self.it = int(state["it"])
        self.last_saved = self.it
        if int(state.get("world_size", self.ctx.world)) != self.ctx.world and self.ctx.is_main:
            print(
                f"warning: {path} was written by {state['world_size']} processes, resuming with "
                f"{self.ctx.world}: the data order differs from an uninterrupted run"
            )
        current = self.dataset_at(self.it - 1) if self.it > 0 else None
        self.stream.load_state_dict(state["stream"], current)


def train(
    config: Config,
    stage: str,
    dataset: Dataset[Any] | None,
    out_dir: str | Path,
    init: str | Path | None = None,
    resume: bool = False,
    regime: TrainingRegime | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> Path:
    """Train the configured model for one stage and return the path of its final weights.

    config: the full Config (the ``stage`` section's TrainConfig drives the run, ``model``
    the network). stage: ``static`` or ``main`` (two-shot phases use ``main`` with a regime).
    dataset: the clip dataset (e.g. from :func:`twoshot.train.recipes.build_stage_dataset`;
    may be None when the regime provides datasets). out_dir: checkpoint, weights and logs.
    init: weights to start from (any form :func:`read_state_dict` accepts; ignored on
    resume). resume: continue from ``out_dir/checkpoint.pt``. regime: a :class:`TrainingRegime`
    (default supervised). device: auto | cpu | cuda | cuda:N (torchrun processes take
    cuda:LOCAL_RANK). progress: tqdm bar.
    Under torchrun every process calls this; rank 0 logs and saves.
    """
    trainer = Trainer(
        config,
        stage,
        dataset,
        out_dir,
        init=init,
        resume=resume,
        regime=regime,
        device=device,
        progress=progress,
    )
    try:
        return trainer.run()
    finally:
        trainer.close()


__all__ = [
    "StepResult",
    "Trainer",
    "TrainingDiverged",
    "STAGES",
    "seed_everything",
    "stage_config",
    "train",
]
