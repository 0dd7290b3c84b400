"""The one-for-all fine-tuning loop: sandwich sampling + in-place distillation + SMoL, resumable.

Every random choice of step ``n`` (the sampled shapes, gate noise, LoRA dropout) is derived from
``(seed, n)`` and the data order from ``(seed, epoch)``, so a checkpoint only needs the step
number, the adapter and the optimizer moments to continue bit-for-bit. Checkpoints are
safetensors + JSON written into a temp directory and renamed, so a killed run keeps the last one.

Multi-GPU: under ``torchrun`` / ``accelerate launch`` every process trains on its own slice of
each step's sequences and the gradients are averaged (see `workers.py`); rank 0 alone writes the
log and the checkpoints, which every process reads on ``--resume`` (a shared file system).
"""

from __future__ import annotations

import csv
import io
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from amoebasearch import atomic
from amoebasearch.data.instructions import Tokenised, collate
from amoebasearch.errors import UsageError, first_line
from amoebasearch.options import option, positive_float, positive_int
from amoebasearch.shape import ShapeSpace
from amoebasearch.train.distill import sandwich, subnet_losses
from amoebasearch.train.smol import CONFIG_FILE, SMoLConfig, SMoLModel, load_balancing_loss, shape_encoding
from amoebasearch.train.workers import SINGLE, Workers
from amoebasearch.userfiles import read_json_object

# a checkpoint is replaced whole (`atomic.directory`), so only a hand edit or a failing disk breaks one
BROKEN_CHECKPOINT = "delete the checkpoint folder to train from the start, or restore it"

CHECKPOINT_DIR = "checkpoint"
LOG_FILE = "train_log.csv"
LOG_FIELDS = ("step", "slot", "depth", "heads", "ffn", "loras", "loss", "tokens", "seconds")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop: the paper's settings where it states them (AdamW, constant lr 2e-4)."""

    steps: int = option(1000, type=positive_int, help="optimizer steps (default 1000)")
    lr: float = option(2e-4, type=positive_float, help="AdamW learning rate, constant (default 2e-4)")
    weight_decay: float = 0.0
    batch: int = option(4, type=positive_int, help="sequences per micro-batch (default 4)")
    grad_accum: int = option(1, type=positive_int, help="micro-batches per step (default 1)")
    sandwich: int = option(4, type=positive_int, help="shapes per step, K >= 2 (default 4)")
    seed: int = option(0, type=int, help="seed of data order, shapes, noise (default 0)")
    save_every: int = option(100, type=positive_int, help="checkpoint interval in steps")
    distill: bool = option(True, name="--no-distill", help="ablation: every subnet learns ground truth")
    balance: bool = option(True, name="--no-balance", help="ablation: no loss-magnitude balancing")
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.sandwich < 2:
            raise UsageError(f"--sandwich {self.sandwich} must be at least 2 (the largest and the smallest subnet)")
        if min(self.steps, self.batch, self.grad_accum, self.save_every) < 1:
            raise UsageError("--steps, --batch, --grad-accum and --save-every must be at least 1")
        if self.lr <= 0:
            raise UsageError(f"--lr {self.lr} must be positive")

    def resumable_with(self, other: TrainConfig) -> bool:
        """Same run except possibly more steps (or another checkpoint interval)."""
        mine, theirs = asdict(self), asdict(other)
        for key in ("steps", "save_every"):
            mine.pop(key), theirs.pop(key)
        return mine == theirs


def slot_name(slot: int, short: bool = False) -> str:
    """Sandwich position: the largest, the smallest, then random1, random2, ..."""
    names = ("L", "S", "r") if short else ("largest", "smallest", "random")
    return names[slot] if slot < 2 else f"{names[2]}{slot - 1}"


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


class DataOrder:
    """Which sequences feed micro-batch ``m`` of step ``n``: a fresh seeded permutation per epoch."""

    def __init__(self, size: int, seed: int) -> None:
        if size < 1:
            raise UsageError("no training sequences: the data holds nothing usable at this --seq-len")
        self.size, self.seed = size, seed
        self._perms: dict[int, list[int]] = {}

    def indices(self, first: int, count: int) -> list[int]:
        out = []
        for position in range(first, first + count):
            epoch, offset = divmod(position, self.size)
            if epoch not in self._perms:
                gen = torch.Generator().manual_seed(self.seed + epoch)
                self._perms = {epoch: torch.randperm(self.size, generator=gen).tolist()}
            out.append(self._perms[epoch][offset])
        return out


def make_optimizer(model: SMoLModel, config: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(directory: Path, model: SMoLModel, optimizer: torch.optim.Optimizer, step: int, config) -> None:
    """Adapter + AdamW moments (safetensors) + step/config (JSON), atomically as one directory."""
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"{index}.{name}"] = torch.as_tensor(value).detach().contiguous().cpu()
    with atomic.directory(directory) as tmp:
        model.save_adapter(tmp)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        atomic.write_json(tmp / "state.json", {"step": step, "train": asdict(config)})


def load_checkpoint(directory: Path, model: SMoLModel, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    state = read_json_object(directory / "state.json", "checkpoint state", BROKEN_CHECKPOINT, ("step", "train"))
    saved = SMoLConfig.from_dict(read_json_object(directory / CONFIG_FILE, "checkpoint SMoL config", BROKEN_CHECKPOINT))
    if saved != model.config:
        raise UsageError(f"--resume: the SMoL settings differ from the checkpoint's {saved.to_dict()}; keep them equal")
    device = str(next(model.parameters()).device)
    try:
        adapter = load_file(str(directory / saved.weights_file), device=device)
        flat = load_file(str(directory / "optimizer.safetensors"), device=device)
    except (OSError, SafetensorError) as err:
        raise UsageError(f"checkpoint {directory} cannot be read ({first_line(err)}): {BROKEN_CHECKPOINT}") from None
    model.load_adapter_state_dict(adapter)
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        index, name = key.split(".", 1)
        moments.setdefault(int(index), {})[name] = value.cpu() if name == "step" else value
    packed = optimizer.state_dict()
    optimizer.load_state_dict({"state": moments, "param_groups": packed["param_groups"]})
    return state


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log rows written after the checkpoint we resume from (they will be redone), and a last
    row a kill cut mid-write (every row the writer finished ends in a newline)."""
    if not path.is_file():
        return
    text = path.read_text()
    finished = text[: text.rfind("\n") + 1]
    rows = [r for r in csv.DictReader(io.StringIO(finished)) if None not in r.values() and int(r["step"]) <= last_step]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())


def require_batches(sequences: int, config: TrainConfig, workers: Workers = SINGLE) -> None:
    """Refuse data too small for one micro-batch per worker, before anything is written or loaded."""
    if sequences < workers.world * config.batch:
        raise UsageError(
            f"{sequences} training sequence(s) cannot fill a micro-batch of {config.batch} on each of "
            f"{workers.world} worker(s): give more data, a shorter --seq-len or a smaller --batch"
        )


# ---------------------------------------------------------------- the loop


def train(
    model: SMoLModel,
    space: ShapeSpace,
    data: list[Tokenised],
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    pad_id: int = 0,
    progress: bool = True,
    on_step: Callable[[int, list[float]], None] | None = None,
    workers: Workers = SINGLE,
) -> list[list[float]]:
    """Fine-tune ``model`` for ``config.steps`` optimizer steps; return each step's raw losses per
    sampled shape (largest first), averaged over ``workers``. Writes ``train_log.csv`` and
    ``checkpoint/`` into ``out_dir`` (rank 0 only).
    """
    from tqdm import tqdm

    out = Path(out_dir)
    if workers.main:
        out.mkdir(parents=True, exist_ok=True)
    workers.barrier()
    checkpoint, log_path = out / CHECKPOINT_DIR, out / LOG_FILE
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, config)
    require_batches(len(data), config, workers)
    start = 0
    if resume and workers.main:
        atomic.recover_directory(checkpoint)  # killed between the two renames of a checkpoint write
    workers.barrier()
    if resume and not (checkpoint / "state.json").is_file():
        # killed before its first checkpoint: nothing is lost by starting over, which is what resuming means then
        resume = False
    if resume:
        saved = load_checkpoint(checkpoint, model, optimizer)
        if not config.resumable_with(TrainConfig(**saved["train"])):
            raise UsageError(f"--resume: the settings differ from the checkpoint's {saved['train']}; keep them equal")
        start = saved["step"]
        if workers.main:
            _truncate_log(log_path, start)
    elif log_path.exists() and workers.main:
        log_path.unlink()
    workers.barrier()  # nobody reads the checkpoint while rank 0 still trims the log
    order = DataOrder(len(data), config.seed)
    history: list[list[float]] = []
    log = writer = None
    if workers.main:
        new_log = not log_path.is_file()
        log = log_path.open("a", newline="")
        writer = csv.DictWriter(log, fieldnames=LOG_FIELDS)
        if new_log:
            writer.writeheader()
    model.train()
    started = time.perf_counter()
    visible = progress and workers.main
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, disable=not visible, unit="step")
    try:
        for step in bar:
            shapes, losses, routes, tokens = _train_step(
                model, space, data, order, optimizer, config, step, pad_id, device, workers
            )
            losses, tokens = workers.average(losses, device), int(workers.sum([tokens], device)[0])
            done = step + 1
            history.append(losses)
            if workers.main:
                elapsed = time.perf_counter() - started
                for slot, (shape, loss, route) in enumerate(zip(shapes, losses, routes, strict=True)):
                    writer.writerow(
                        {
                            "step": done,
                            "slot": slot_name(slot),
                            "depth": shape.depth,
                            "heads": shape.heads,
                            "ffn": shape.ffn,
                            "loras": "+".join(str(i) for i in route),
                            "loss": f"{loss:.6f}",
                            "tokens": tokens,
                            "seconds": f"{elapsed:.3f}",
                        }
                    )
                log.flush()
                bar.set_postfix_str(" ".join(f"{slot_name(i, short=True)}={v:.3f}" for i, v in enumerate(losses)))
                if done % config.save_every == 0 or done == config.steps:
                    save_checkpoint(checkpoint, model, optimizer, done, config)
            if on_step is not None:
                on_step(done, losses)
    finally:
        if log is not None:
            log.close()
        model.eval()
    workers.barrier()  # the last checkpoint is on disk before any process returns
    return history


def _train_step(model, space, data, order, optimizer, config, step, pad_id, device, workers=SINGLE):
    """One optimizer step: for each micro-batch, the K sandwich shapes forward and backward in turn.

    Worker ``r`` of ``W`` takes micro-batches ``r, r + W, ...`` of the step ``W·grad_accum`` would
    make in one process; averaging the gradients over workers then gives that step exactly.
    """
    torch.manual_seed(step_seed(config.seed, step))  # gate noise and dropout of this step
    shapes = sandwich(space, random.Random(step_seed(config.seed, step)), config.sandwich)
    optimizer.zero_grad(set_to_none=True)
    totals = [0.0] * len(shapes)
    routes: list[list[int]] = [[] for _ in shapes]
    tokens = 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for micro in range(config.grad_accum):
        first = ((step * config.grad_accum + micro) * workers.world + workers.rank) * config.batch
        batch = collate([data[i] for i in order.indices(first, config.batch)], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        tokens += int(batch["attention_mask"].sum())
        teacher = reference = None
        chosen = []
        for slot, shape in enumerate(shapes):
            route = model.route(shape, noisy=True)
            with autocast:
                logits = model(shape, batch["input_ids"], batch["attention_mask"], route=route)
            loss, raw = subnet_losses(logits, batch["labels"], teacher, reference, config.distill, config.balance)
            (loss / config.grad_accum).backward()
            if slot == 0:
                teacher, reference = logits.detach(), raw
            chosen.append(route.routed)
            totals[slot] += float(raw) / config.grad_accum
            routes[slot] = route.index.tolist()
        if model.config.num_loras > 1 and model.config.balance_coef > 0:
            encodings = torch.stack([shape_encoding(s, model.dims) for s in shapes]).to(device)
            aux = load_balancing_loss(model.gate.probabilities(encodings), torch.stack(chosen), model.config.num_loras)
            (model.config.balance_coef * aux / config.grad_accum).backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    workers.average_gradients(trainable)
    if config.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
    optimizer.step()
    return shapes, totals, routes, tokens
