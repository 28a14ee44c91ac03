"""Training with Ray Train, readable top to bottom.

``train(config, datasets)`` starts a ``TorchTrainer`` whose workers run ``train_loop``: build the
model, load its initial weights (a convolutionalized classifier, or the coarser FCN of the
staged recipe), then SGD/Adam over shards of the prepared Ray Dataset with the paper's loss,
gradient accumulation, optional bf16 autocast and channels_last. Rank 0 logs to MLflow,
validates, reports checkpoints to Ray Train and writes the final model. Rank 0 also shows the
console's view: one bar over optimizer steps with the loss, learning rate and time left
(``pipeline/runtime/progress.py``: in place on a terminal, a line every 30 s in a log).

Data parallelism is exact: the per-worker loss is normalised so that the all-reduced (averaged)
gradient equals the single-worker gradient of the same global batch.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.data.datasets.bsds import unstack
from pipeline.data.loader import Augment, InputSpec, batch_to_tensors
from pipeline.errors import ParamsError
from pipeline.metrics.edges import benchmark_thresholds, evaluate_image, score_counts
from pipeline.metrics.normals import NormalErrorAccumulator
from pipeline.metrics.segmentation import confusion_matrix, segmentation_scores
from pipeline.models import build_model, param_groups
from pipeline.models.fastconv import use_fast_convs
from pipeline.models.vgg import init_convs
from pipeline.runtime.cpu_allocator import keep_freed_memory
from pipeline.runtime.fsutil import atomic_path
from pipeline.runtime.progress import progress_bar
from pipeline.runtime.raylogs import quiet_ray
from pipeline.training.losses import (
    labelled_cross_entropy,
    pixel_loss,
    predict_labels,
    sample_mask,
)
from pipeline.training.reproducible import make_reproducible

#: a checkpoint's files: the full training state; in Ray Train's local mode (no workers) the
#: folder under ``storage/name`` that the loop keeps it in
STATE_FILE = "state.pt"
LOCAL_CHECKPOINT = "local_checkpoint"


@dataclass
class TrainConfig:
    """Everything one training run needs (resolved from params.yaml by the stage)."""

    model: str
    num_classes: int
    out_dir: str  # absolute: workers run in another directory
    model_options: dict = field(default_factory=dict)  # width, dropout, ... for build_model
    init: str | None = None  # classifier or coarser-FCN state dict to start from (absolute)
    reset_head: bool = False  # re-initialise fc6/fc7 after loading a classifier (see backbone)
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 1e-10
    # fixed | step (x lr_gamma every lr_step) | multistep (x lr_gamma at each of lr_milestones)
    # | poly ((1 - t/T)^lr_power)
    lr_policy: str = "fixed"
    lr_step: int = 2000  # optimizer steps between decays (step)
    lr_milestones: list = field(default_factory=list)  # optimizer steps of the decays (multistep)
    lr_gamma: float = 0.1
    lr_power: float = 0.9
    momentum: float = 0.99
    weight_decay: float = 5e-4
    batch_size: int = 1  # global images per forward pass (all workers together)
    accumulate: int = 1  # forward passes per optimizer step
    iterations: int = 100_000  # optimizer steps
    loss_kind: str = "softmax"
    loss_reduction: str = "image"
    loss_sample_p: float = 1.0
    task: str = "segmentation"  # segmentation | edges | normals (PixelNet's sampled losses)
    precision: str = "fp32"  # fp32 | bf16
    channels_last: bool = False
    fast_convs: bool = False  # NNPACK Winograd 3x3 convs on CPU fp32 (models/fastconv.py)
    augment: dict = field(default_factory=dict)
    input: dict = field(default_factory=dict)
    seed: int = 0
    log_every: int = 10
    val_every: int = 0  # optimizer steps between validations (0: once per epoch)
    max_val_images: int = 0  # 0: the whole val split
    mlflow_uri: str | None = None
    mlflow_run_id: str | None = None


def build_for_training(config: TrainConfig) -> torch.nn.Module:
    """The model with its starting weights (shared by training and the equivalence tests)."""
    net = build_model(
        config.model, config.num_classes, pretrained=config.init, **config.model_options
    )
    if config.reset_head:  # every stream of a late-fusion net has its own fc head
        for stream in getattr(net, "streams", {"": net}).values():
            if hasattr(stream, "head"):
                init_convs(stream.head)
    return net


class LossModule(torch.nn.Module):
    """Model + loss in one forward, so DDP sees the whole computation.

    Dense models (FCN, DeepLab) get the per-pixel loss; a DeepLab model trains on stride-8 scores
    against labels subsampled to that grid (``subsample_labels``). A model that samples its own
    training pixels (PixelNet) provides ``training_loss`` and is used as is.
    """

    def __init__(self, net: torch.nn.Module, config: TrainConfig):
        super().__init__()
        self.net = net
        self.config = config

    def forward(self, x: torch.Tensor, y: torch.Tensor, generator=None):
        cfg = self.config
        if hasattr(self.net, "training_loss"):
            return self.net.training_loss(
                x, y, task=cfg.task, generator=generator, reduction=cfg.loss_reduction
            )
        if cfg.task == "normals":
            raise ValueError(
                f"task normals needs a model with its own training_loss (pixelnet), not "
                f"{cfg.model!r}"
            )
        if y.ndim == 4:  # a two-headed net (SIFT Flow): one loss per head, summed (FCN §5)
            heads = self.net.forward_heads(x)
            columns = ("label", *self.net.extra_heads)
            losses = [self._loss(heads[c], y[:, k], x) for k, c in enumerate(columns)]
            # each head normalised by its own count (Caffe: one loss layer each), returned
            # over the main head's normaliser; reduction "image" (the paper's) is exact under
            # DDP too, "pixel" uses each worker's own ratio of valid pixels
            norm = losses[0][1]
            return sum(total * (norm / n) for total, n in losses), norm
        return self._loss(self.net(x), y, x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if logits.shape[-2:] != y.shape[-2:]:
            y = self.net.subsample_labels(y, logits)
        keep = None
        if cfg.loss_sample_p < 1.0:
            keep = sample_mask(y, cfg.loss_sample_p, stride=_output_stride(self.net, x, logits))
        return pixel_loss(logits, y, cfg.loss_kind, cfg.loss_reduction, keep)


def _output_stride(net, x, logits) -> int:
    """Size of one final-layer cell in label pixels (loss sampling drops whole cells)."""
    return int(getattr(net, "output_stride", 32)) if logits.shape[-1] == x.shape[-1] else 1


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Caffe's FCN solver: biases at 2x lr and no weight decay; frozen params left out."""
    groups = param_groups(model, config.lr, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    raise ValueError(f"unknown optimizer {config.optimizer!r} (sgd | adam)")


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    """The lr policy as a torch scheduler stepped once per optimizer step (None: fixed)."""
    from torch.optim import lr_scheduler

    if config.lr_policy == "fixed":
        return None
    if config.lr_policy == "step":
        return lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    if config.lr_policy == "multistep":
        return lr_scheduler.MultiStepLR(
            optimizer, milestones=list(config.lr_milestones), gamma=config.lr_gamma
        )
    if config.lr_policy == "poly":
        return lr_scheduler.PolynomialLR(
            optimizer, total_iters=config.iterations, power=config.lr_power
        )
    raise ValueError(f"unknown lr_policy {config.lr_policy!r} (fixed | step | multistep | poly)")


# validation during training scores edges at 9 thresholds (the edge stage's benchmark uses 99):
# enough to rank sweep trials and stop bad ones, at a ninth of the matching cost
VAL_EDGE_THRESHOLDS = benchmark_thresholds(9)


def evaluate_model(
    model, rows, spec: InputSpec, num_classes: int, device, autocast, task: str = "segmentation"
) -> dict:
    """Mean IU etc. of ``model`` over prepared rows (batch 1: images keep their own size), and
    ``loss``: the mean cross-entropy per labelled pixel; for ``task="normals"`` the angular
    errors (mean, median, ... in degrees); for ``task="edges"`` ODS / OIS / AP of the NMS'd
    maps (``VAL_EDGE_THRESHOLDS``)."""
    model.eval()
    hist = np.zeros((num_classes, num_classes), np.int64)
    loss_sum, labelled = 0.0, 0
    normals = NormalErrorAccumulator()
    edge_ids, edge_counts = [], []
    with torch.no_grad():
        for batch in rows:
            x, y = batch_to_tensors(batch, spec, task=task)
            with autocast():
                logits = getattr(model, "predict_dense", model)(x.to(device))
            if task == "edges":
                prob = torch.sigmoid(logits.float())[0, 0].cpu().numpy()
                gts = unstack(batch["boundaries"][0], int(batch["height"][0]))
                edge_counts.append(evaluate_image(prob, gts, VAL_EDGE_THRESHOLDS, nms=True))
                edge_ids.append(str(batch["id"][0]))
                continue
            if task == "normals":
                pred = logits.float()[0].permute(1, 2, 0).cpu().numpy()
                normals.add(pred, y[0].permute(1, 2, 0).numpy())
                continue
            pred = predict_labels(logits.float()).cpu().numpy()
            truth = y[:, 0] if y.ndim == 4 else y  # validation scores the main head
            hist += confusion_matrix(truth.numpy(), pred, num_classes)
            image_loss, image_pixels = labelled_cross_entropy(logits, truth)
            loss_sum, labelled = loss_sum + image_loss, labelled + image_pixels
    model.train()
    if task == "edges":
        result = score_counts(edge_ids, np.stack(edge_counts), VAL_EDGE_THRESHOLDS)
        return {"ods": result.ods.f, "ois": result.ois.f, "ap": result.ap}
    if task == "normals":
        return {k.replace(".", "_"): v for k, v in normals.scores().items() if k != "n_pixels"}
    return {**segmentation_scores(hist), "loss": loss_sum / labelled if labelled else math.nan}


class RayTrainSession:
    """What ``train_loop`` asks of its runner, on a Ray Train worker: rank, data, checkpoints,
    reports. (A sweep trial that trains in its own process passes ``TuneTrialSession``.)

    ``local_checkpoint``: the folder that holds the checkpoint when Ray Train runs the loop in
    the driver's process (``num_workers: 0``, its "local mode"). Local mode keeps a reported
    checkpoint only in memory, so a killed driver would start again from step 0; this session
    writes it there itself (atomically: a killed write leaves the previous one) and restores
    from it.
    """

    def __init__(self, local_checkpoint: str | None = None):
        import ray.train
        import ray.train.torch

        self._train = ray.train
        self._local = Path(local_checkpoint) if local_checkpoint else None
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.prepare_model = ray.train.torch.prepare_model
        self.node = ray_node_id()

    def dataset(self, name: str):
        try:
            return self._train.get_dataset_shard(name)
        except (KeyError, ValueError, RuntimeError, AssertionError):  # Ray asserts it exists
            return None

    def checkpoint(self):
        if self._local is not None:
            found = (self._local / STATE_FILE).is_file()
            return self._train.Checkpoint.from_directory(self._local) if found else None
        return self._train.get_checkpoint()

    def report(self, metrics: dict, folder: str | None = None) -> None:
        if folder is None:
            self._train.report(metrics)
        elif self._local is not None:
            keep_checkpoint(folder, self._local)
            self._train.report(metrics)
        else:
            self._train.report(metrics, checkpoint=self._train.Checkpoint.from_directory(folder))


def keep_checkpoint(folder: str | Path, target: Path) -> None:
    """Copy a checkpoint folder onto ``target``, replacing the previous one atomically."""
    with atomic_path(target) as tmp:
        shutil.copytree(folder, tmp)


class TuneTrialSession:
    """``train_loop`` run by a Ray Tune trial in the trial's own process (one worker): the same
    loop, with the trial's datasets, and reports that go to Tune (its schedulers stop trials on
    them). Ray Train's own functions refuse to run inside a Tune trial, hence this adapter."""

    rank, world = 0, 1

    def __init__(self, datasets: dict):
        import ray.tune

        self._tune = ray.tune
        self._datasets = datasets
        gpu = torch.cuda.is_available() and bool(ray_gpu_ids())
        self.device = torch.device("cuda" if gpu else "cpu")
        self.node = ray_node_id()

    def prepare_model(self, model):
        return model.to(self.device)

    def dataset(self, name: str):
        return self._datasets.get(name)

    def checkpoint(self):
        return self._tune.get_checkpoint()

    def report(self, metrics: dict, folder: str | None = None) -> None:
        # no checkpoint: a trial is short and a failed one is reported as failed, not resumed
        self._tune.report(metrics)


def ray_gpu_ids() -> list:
    import ray

    return ray.get_gpu_ids()


def ray_node_id() -> str:
    """The Ray node this process runs on (a sweep's trial rows name it)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def train_loop(cfg: dict, session=None) -> None:
    """Runs on every Ray Train worker (``session`` None: a ``RayTrainSession``), or in a sweep
    trial's process (``TuneTrialSession``).

    ``cfg`` is a TrainConfig as a dict plus ``checkpoint_every`` (an execution setting: optimizer
    steps between checkpoints, 0 = epoch ends only) and, in Ray Train's local mode,
    ``local_checkpoint`` (see ``RayTrainSession``). A restarted worker group (a lost worker or
    node, ``ray.max_failures``) or a rerun of a killed driver resumes from the last checkpoint:
    weights, optimizer, scheduler, counters, history and every random state, then skips the
    batches of the current epoch it had already consumed, so it ends where an uninterrupted run
    ends. Every validation (``val_every``) is reported with its metrics, so a sweep's scheduler
    can stop a trial on them.
    """
    cfg = dict(cfg)
    checkpoint_every = int(cfg.pop("checkpoint_every", 0) or 0)
    session = session or RayTrainSession(cfg.pop("local_checkpoint", None))
    quiet_ray()  # a Train worker is a process of its own: warnings only, as in the driver
    config = TrainConfig(**cfg)
    rank, world = session.rank, session.world
    make_reproducible(config.seed)
    device = session.device
    if device.type == "cpu":
        keep_freed_memory()  # no page faults on every step (pipeline/runtime/cpu_allocator.py)
    spec, augment = InputSpec(**config.input), Augment(**config.augment)
    rng = np.random.default_rng([config.seed, rank])

    net = build_for_training(config)
    if config.fast_convs:
        use_fast_convs(net)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = LossModule(net, config)
    model = session.prepare_model(model) if world > 1 else model.to(device)
    optimizer = make_optimizer(net, config)
    scheduler = make_scheduler(optimizer, config)
    generator = torch.Generator().manual_seed(config.seed + rank)
    dtype = torch.bfloat16 if config.precision == "bf16" else None

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {world} workers")
    local_batch = config.batch_size // world
    shard = session.dataset("train")
    val_rows = None
    if rank == 0:
        val_ds = session.dataset("val")
        if val_ds is not None:
            val_rows = list(val_ds.iter_batches(batch_size=1, batch_format="numpy"))
            if config.max_val_images:
                val_rows = val_rows[: config.max_val_images]
    mlflow = _MlflowLogger(config) if rank == 0 else None

    step, micro, epoch, history, t0 = 0, 0, 0, [], time.time()
    running, skip = [], 0
    # epoch ends checkpoint at most every tenth of the run: a small split's many short epochs
    # would otherwise write the whole state every few steps
    epoch_gap, saved_at = max(1, config.iterations // 10), 0
    checkpoint = session.checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        step, micro, epoch, skip = state["step"], state["micro"], state["epoch"], state["batches"]
        saved_at = step
        history, t0 = state["history"], time.time() - state["elapsed"]
        rng.bit_generator.state = state["rng"][rank]
        generator.set_state(state["generator"][rank])
        torch.set_rng_state(state["torch_rng"][rank])
        history.append({"step": step, "resumed": True})  # in history.json: it happened
        if rank == 0:
            print(f"{Path(config.out_dir).name}: resumed at step {step}, epoch {epoch}", flush=True)
    bar = None
    if rank == 0:
        name = Path(config.out_dir).name
        bar = progress_bar(total=config.iterations, initial=step, desc=f"train {name}", unit="step")
    while step < config.iterations:
        batches = 0
        for batch in shard.iter_batches(
            batch_size=local_batch,
            batch_format="numpy",
            local_shuffle_buffer_size=max(local_batch * 50, 100),
            local_shuffle_seed=config.seed + epoch * 1000 + rank,
            drop_last=True,
        ):
            batches += 1
            if batches <= skip:  # consumed before the checkpoint this run resumed from
                continue
            x, y = batch_to_tensors(batch, spec, augment, rng, task=config.task)
            x, y = x.to(device), y.to(device)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            last_micro = (micro + 1) % config.accumulate == 0
            sync = model.no_sync() if (world > 1 and not last_micro) else _nullcontext()
            with sync:
                with autocast():
                    total, norm = model(x, y, generator)
                norm = _global_normaliser(norm, world)
                loss = total / norm / config.accumulate
                loss.backward()
            running.append(loss.item() * config.accumulate)
            micro += 1
            if not last_micro:
                continue
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            step += 1
            step_loss = _global_mean(sum(running) / len(running), world)
            running = []
            if rank == 0:
                history.append({"step": step, "loss": step_loss, "time": time.time() - t0})
                if step % config.log_every == 0 or step == 1 or step == config.iterations:
                    mlflow.log({"train_loss": step_loss}, step)
                lr = optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.3g}", refresh=False)
                bar.update()
            # the same decision on every rank: all of them report (Ray Train expects it)
            validate = bool(config.val_every) and (
                step % config.val_every == 0 or step == config.iterations
            )
            if rank == 0 and validate and val_rows:
                _validate(net, val_rows, spec, config, device, autocast, history, mlflow, step)
            if step >= config.iterations:
                break
            save = bool(checkpoint_every) and step % checkpoint_every == 0
            saved_at = step if save else saved_at
            if save or validate:
                state = _state(net, optimizer, scheduler, step, micro, epoch, batches, history, t0)
                _report(session, state, (rng, generator), checkpoint=save)
        if batches == 0:  # stages check this first (experiment.check_batch_fits); never spin
            raise ParamsError(
                f"batch_size {config.batch_size}: epoch {epoch} of {Path(config.out_dir).name} "
                f"gave worker {rank} no complete batch (too few training images)"
            )
        epoch, skip = epoch + 1, 0
        if rank == 0 and not config.val_every and val_rows:
            _validate(net, val_rows, spec, config, device, autocast, history, mlflow, step)
        state = _state(net, optimizer, scheduler, step, micro, epoch, 0, history, t0)
        # mid-accumulation (an epoch ended between optimizer steps) the summed gradients are not
        # in the state: report without a checkpoint, the last one stays the resume point
        save = micro % config.accumulate == 0 and (
            step - saved_at >= epoch_gap or step >= config.iterations
        )
        saved_at = step if save else saved_at
        _report(session, state, (rng, generator), checkpoint=save)

    if rank == 0:
        bar.close()
        _save_final(net, config, history)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _global_normaliser(norm: torch.Tensor, world: int) -> torch.Tensor:
    """Global normaliser / world: the averaged DDP gradient then equals the global-batch one."""
    if world == 1:
        return norm
    import torch.distributed as dist

    norm = norm.detach().clone()
    dist.all_reduce(norm)
    return norm / world


def _global_mean(value: float, world: int) -> float:
    if world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item() / world)


def _validate(net, rows, spec, config, device, autocast, history, mlflow, step) -> None:
    scores = evaluate_model(net, rows, spec, config.num_classes, device, autocast, config.task)
    metrics = {f"val_{k}": v for k, v in scores.items() if k != "per_class_iu"}
    history.append({"step": step, **metrics})
    mlflow.log(metrics, step)


def _state(net, optimizer, scheduler, step, micro, epoch, batches, history, t0) -> dict:
    """Everything a resumed run needs but the per-worker random states (``_report`` adds them):
    ``batches`` of epoch ``epoch`` are consumed (0 at an epoch end)."""
    return {
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": step,
        "micro": micro,
        "epoch": epoch,
        "batches": batches,
        "history": list(history),
        "elapsed": time.time() - t0,
    }


def _report(session, state: dict, generators: tuple, checkpoint: bool = True) -> None:
    """Report the step, loss and latest validation metrics, with a checkpoint written by rank 0
    (the runner persists it) holding the random states of every rank (gathered: each worker
    draws its own augmentation and samples)."""
    rng, generator = generators
    mine = (rng.bit_generator.state, generator.get_state(), torch.get_rng_state())
    every = [mine]
    if session.world > 1:
        import torch.distributed as dist

        every = [None] * session.world
        dist.all_gather_object(every, mine)
    history = state["history"]
    losses = [h["loss"] for h in history if "loss" in h]
    validations = [h for h in history if any(k.startswith("val_") for k in h)]
    metrics = {
        "step": state["step"],
        "epoch": state["epoch"],
        "loss": losses[-1] if losses else float("nan"),
        "node": session.node,
        # the latest validation and the step it ran at (a scheduler compares every report)
        **({k: v for k, v in validations[-1].items() if k != "step"} if validations else {}),
        **({"val_step": validations[-1]["step"]} if validations else {}),
    }
    if session.rank != 0 or not checkpoint:
        session.report(metrics)
        return
    state = {
        **state,
        "rng": [e[0] for e in every],
        "generator": [e[1] for e in every],
        "torch_rng": [e[2] for e in every],
    }
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / STATE_FILE)
        session.report(metrics, folder=tmp)


def _save_final(net, config: TrainConfig, history: list) -> None:
    """The final model and its training history: the stage's declared DVC outputs."""
    module = net.to("cpu").to(memory_format=torch.contiguous_format)
    out = Path(config.out_dir)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        torch.save(module.state_dict(), tmp / "model.pt")
        (tmp / "history.json").write_text(json.dumps(history, indent=1))
        (tmp / "config.json").write_text(json.dumps(asdict(config), indent=1, default=str))


class _MlflowLogger:
    """Logs to the run the stage opened (workers only know its id and the store's URI)."""

    def __init__(self, config: TrainConfig):
        self.client = None
        if config.mlflow_uri and config.mlflow_run_id:
            import mlflow

            self.client = mlflow.MlflowClient(config.mlflow_uri)
            self.run_id = config.mlflow_run_id

    def log(self, metrics: dict, step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))
        ]
        self.client.log_batch(self.run_id, metrics=items)


def train(
    config: TrainConfig,
    datasets: dict,
    *,
    num_workers: int = 0,
    cpus_per_worker: float = 1.0,
    use_gpu: bool = False,
    storage_path: str | None = None,
    name: str = "train",
    checkpoint_every: int = 0,
    max_failures: int = 0,
    loop=train_loop,
    callbacks: list | None = None,
) -> list[dict]:
    """Run ``train_loop`` under a TorchTrainer and return the training history.

    ``checkpoint_every`` optimizer steps (and at epoch ends at least a tenth of the run apart)
    the full training state is
    checkpointed under ``storage_path/name``; ``max_failures`` worker-group restarts are allowed
    (each resumes from that checkpoint). Give ``name`` a hash of the config and data
    (``experiment.run_name``): a rerun of the same name resumes a killed driver's run, so a
    changed config must never share it. A run that finishes removes its checkpoints. ``loop``
    is the per-worker function (``train_loop``; tests wrap it to kill a worker); ``callbacks``
    are Ray Train ``UserCallback``s (a sweep trial forwards rank 0's reports to Tune with one).
    """
    from ray.train import (
        CheckpointConfig,
        DataConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    scaling = ScalingConfig(
        num_workers=num_workers,
        use_gpu=use_gpu,
        resources_per_worker={"CPU": cpus_per_worker} if num_workers else None,
    )
    # Ray Data streams blocks in whatever order they finish unless told otherwise; with that
    # default two runs of the built-in PixelNet config parted after one epoch (step 20 of 200:
    # 89.3 vs 84.0 mean IU). (The last variation, in the 7th digit, was a CPU kernel's atomic
    # adds: pipeline/training/reproducible.py.)
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True
    storage = storage_path or tempfile.mkdtemp(prefix="densepipe-ray-")
    loop_config = {**asdict(config), "checkpoint_every": checkpoint_every}
    if not num_workers:  # local mode: the loop keeps its checkpoint on disk itself
        loop_config["local_checkpoint"] = str(Path(storage) / name / LOCAL_CHECKPOINT)
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=scaling,
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=ingest),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=callbacks,
            # the workers' and controller's console: warnings, not a line per report (the
            # loop's bar shows progress); Ray's log files keep everything
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    trainer.fit()
    shutil.rmtree(Path(storage) / name, ignore_errors=True)  # done: nothing left to resume
    return json.loads((Path(config.out_dir) / "history.json").read_text())


def train_in_trial(config: TrainConfig, datasets: dict) -> list[dict]:
    """``train_loop`` in a Ray Tune trial's own process (a sweep trial with no Train workers):
    the trial's CPUs do the training and every validation is a Tune report."""
    train_loop(asdict(config), session=TuneTrialSession(datasets))
    return json.loads((Path(config.out_dir) / "history.json").read_text())
