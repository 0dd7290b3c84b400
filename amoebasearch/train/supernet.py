"""The supernet directory that ``train`` writes and ``export --supernet`` / ``find`` read.

base.json            model reference (name or path) + signature; the weights stay where they are
plan.json            the plan (orderings) the shapes are cut with
shape_space.json     depths, head options, FFN options the supernet was trained over
smol_config.json     SMoL hyper-parameters and the adapter format (``adapter_format``):
  amoebasearch-smol  smol.safetensors: every LoRA of the mixture + the shape gate
  peft-lora          (``train --no-smol``) adapter_config.json + adapter_model.safetensors: one
                     standard peft LoRA, ``PeftModel.from_pretrained(base, directory)`` loads it
train_config.json    loop settings and data        train_log.csv     loss per step and sampled shape
checkpoint/          the latest resumable state (adapter + optimizer moments + step)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amoebasearch import atomic
from amoebasearch.data import pad_token
from amoebasearch.data.instructions import Tokenised
from amoebasearch.devices import check_device
from amoebasearch.errors import UsageError
from amoebasearch.export import extract
from amoebasearch.models import DEFAULT_MODEL, EMBEDDED_MODELS, LoadedModel, load, load_config, model_signature
from amoebasearch.options import option, positive_int
from amoebasearch.planfile import Plan
from amoebasearch.shape import ModelDims, Shape, ShapeSpace, saved_ffn_step
from amoebasearch.train import instruct
from amoebasearch.train.smol import SMoLConfig, SMoLModel, read_adapter_config
from amoebasearch.train.trainer import TrainConfig, require_batches, train
from amoebasearch.train.workers import Workers
from amoebasearch.userfiles import check_output_path, read_json_object

SUPERNET_FORMAT = 1


def space_to_dict(space: ShapeSpace) -> dict[str, Any]:
    return {**space.to_dict(), "min_depth": space.depths[0]}


# what the readers of a supernet directory use from each of its JSON files
SUPERNET_KEYS = {"base.json": ("model", "signature"), "shape_space.json": ("ffn_step", "min_depth")}


def read_supernet_file(directory: Path, name: str) -> dict[str, Any]:
    """One JSON file of a supernet directory (`SUPERNET_KEYS`), or a one-line error naming it."""
    fix = "restore the file, or train the supernet again with `amoebasearch train`"
    return read_json_object(directory / name, "supernet file", fix, SUPERNET_KEYS.get(name, ()))


def read_base(directory: Path) -> dict[str, Any]:
    """A supernet directory's ``base.json``: the model it was trained on and that model's signature."""
    if not (directory / "base.json").is_file():
        raise UsageError(f"{directory} is not a supernet directory (no base.json): make one with `amoebasearch train`")
    return read_supernet_file(directory, "base.json")


def check_base_signature(directory: Path, base: dict[str, Any], config: Any) -> None:
    """Refuse a base model (a ``--model`` override, or a moved checkpoint) the supernet was not trained on."""
    signature = model_signature(config)
    if signature != base["signature"]:
        raise UsageError(
            f"supernet {directory} was trained on model signature {base['signature']}, not {signature}: "
            "pass the model it was trained on with --model"
        )


def training_data(directory: Path) -> tuple[str | None, int]:
    """(data file as given to `train`, None for the default set; tokens per sequence) of a supernet."""
    config = read_supernet_file(directory, "train_config.json")
    data = config.get("data")
    return (None if data in (None, instruct.DEFAULT_DATA_LABEL) else data), int(config.get("seq_len", 256))


def space_from_dict(data: dict[str, Any], dims: ModelDims, plan: Plan) -> ShapeSpace:
    if not all(isinstance(data[key], int) and not isinstance(data[key], bool) for key in ("ffn_step", "min_depth")):
        raise UsageError(f"the shape space's ffn_step and min_depth must be integers, not {data}: train again")
    step = saved_ffn_step(data["ffn_step"], dims)
    return ShapeSpace(dims, plan.ordering, ffn_step=step, min_depth=data["min_depth"])


def write_header(out: Path, model_ref: str, config: Any, plan: Plan, space: ShapeSpace, extra: dict) -> None:
    """Everything but the weights: written first, so a killed run's directory is still self-describing."""
    out.mkdir(parents=True, exist_ok=True)
    plan.save(out / "plan.json")
    atomic.write_json(out / "shape_space.json", space_to_dict(space))
    atomic.write_json(out / "train_config.json", extra)
    # last: a directory with base.json has its whole header, so --resume can rely on it
    atomic.write_json(
        out / "base.json", {"format": SUPERNET_FORMAT, "model": model_ref, "signature": model_signature(config)}
    )


@dataclass(frozen=True)
class DataConfig:
    """Training data: which pairs or text, cut how."""

    path: str | None = option(
        None, name="--data", help="Alpaca JSON/JSONL (instruction/input/output), ShareGPT JSON, or .txt"
    )
    seq_len: int = option(256, type=positive_int, help="tokens per sequence (default 256)")
    max_examples: int = option(50_000, type=positive_int, help="examples read (default 50000)")


@dataclass(frozen=True)
class SpaceConfig:
    """The shape space trained."""

    # half the layers by default: deeper cuts lose too much to recover with LoRA, and every shape
    # trained costs capacity the useful ones share
    min_depth: int | None = option(None, type=positive_int, help="shallowest shape trained (default half the layers)")
    ffn_step: int = option(64, type=positive_int, help="FFN width granularity (default 64)")


def train_supernet(
    out: str | Path,
    model: str = DEFAULT_MODEL,
    plan: str | Path | None = None,
    data: DataConfig | None = None,
    space: SpaceConfig | None = None,
    smol: SMoLConfig | None = None,
    loop: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
) -> Path:
    """`amoebasearch train` as a function: load, attach SMoL, fine-tune, write the supernet directory.

    ``device`` defaults to the first GPU when there is one; under ``torchrun`` / ``accelerate
    launch`` each process takes its ``LOCAL_RANK``'s GPU and trains a slice of every step (see
    `workers.py`). On ``resume`` the run's own plan and shape space hold, whatever ``plan`` and
    ``space`` say now.
    """
    out = Path(out)
    device = check_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data, space = data or DataConfig(), space or SpaceConfig()
    smol, loop = smol or SMoLConfig(), loop or TrainConfig()
    check_output_path(out, "--out", folder=True)
    if not resume and out.is_dir() and any(out.iterdir()):
        if (out / "base.json").is_file():
            raise UsageError(
                f"--out {out} holds a supernet run: pass --resume to continue it, or choose a new directory"
            )
        raise UsageError(f"--out {out} is not empty and holds no supernet run: choose a new or empty directory")
    if resume and not (out / "base.json").is_file():
        raise UsageError(f"--resume: {out} is not a supernet directory (no base.json)")
    workers, device = Workers.from_environment(device)
    workers.barrier()  # every process has checked --out before rank 0 writes into it
    examples = instruct.read_examples(data.path)  # cheap checks before the (slow) weight load
    held_out = 0
    if not isinstance(examples, str):
        examples, held = instruct.held_out_split(examples)
        examples, held_out = examples[: data.max_examples], len(held)
    config = load_config(model)
    dims = ModelDims.from_config(config)
    if resume:  # the run's own plan and shape space, whatever --plan/--min-depth say now
        plan_obj = Plan.load(out / "plan.json", config)
        shape_space = space_from_dict(read_supernet_file(out, "shape_space.json"), dims, plan_obj)
    else:
        plan_obj = Plan.load(plan, config) if plan else Plan.identity(config)
        min_depth = space.min_depth if space.min_depth is not None else max(1, dims.num_layers // 2)
        if not 1 <= min_depth <= dims.num_layers:
            raise UsageError(f"--min-depth {min_depth} must be between 1 and the model's {dims.num_layers} layers")
        shape_space = ShapeSpace(dims, plan_obj.ordering, ffn_step=space.ffn_step, min_depth=min_depth)
    loaded = load(model)
    if loaded.tokenizer is None:
        raise UsageError(f"model {model} has no tokenizer: pass a checkpoint directory that includes one")
    tokenizer = loaded.tokenizer
    if isinstance(examples, str):
        sequences = instruct.tokenise_text(examples, tokenizer, data.seq_len)
    else:
        sequences = instruct.tokenise_examples(examples, tokenizer, data.seq_len)
    require_batches(len(sequences), loop, workers)
    extra = {
        "train": asdict(loop),
        "data": str(data.path) if data.path else instruct.DEFAULT_DATA_LABEL,
        "sequences": len(sequences),
        "seq_len": data.seq_len,
        "max_examples": data.max_examples,
        "held_out_pairs": held_out,  # the data's last pairs, never read (`find --metric instruct` scores them)
    }
    if resume:
        previous = read_supernet_file(out, "train_config.json")
        if {k: v for k, v in previous.items() if k != "train"} != {k: v for k, v in extra.items() if k != "train"}:
            raise UsageError("--resume: data or --seq-len differ from the run being resumed; keep them equal")
    elif workers.main:
        reference = model if model in EMBEDDED_MODELS else str(Path(model).resolve())
        write_header(out, reference, config, plan_obj, shape_space, extra)
    torch.manual_seed(loop.seed)  # the same LoRA initialisation in every process
    smol_model = SMoLModel(loaded.model.to(device), smol, plan_obj.ordering)
    pad_id = pad_token(tokenizer)
    train(
        smol_model, shape_space, sequences, loop, out, resume=resume, pad_id=pad_id, progress=progress, workers=workers
    )
    if workers.main:
        smol_model.save_adapter(out)
        if resume:  # the loop settings the finished run ended with (a resume may add --steps)
            atomic.write_json(out / "train_config.json", extra)
    workers.barrier()
    return out


@dataclass
class Supernet:
    """A loaded supernet: the base model with SMoL attached, its plan and shape space."""

    directory: Path
    loaded: LoadedModel
    plan: Plan
    space: ShapeSpace
    smol: SMoLModel

    def export(self, shape: Shape) -> nn.Module:
        """A standalone subnet with ``shape``'s active LoRAs merged into its (sliced) weights."""
        shape.validate(self.loaded.dims)
        with self.smol.merged(shape) as merged:
            subnet = extract(merged, shape, self.plan.ordering)
        with torch.no_grad():
            route = self.smol.route(shape)
        subnet.config.amoebasearch["supernet"] = {
            "directory": str(self.directory),
            "loras": route.index.tolist(),
            "gate_weights": [round(float(w), 6) for w in route.weight],
        }
        return subnet

    def perplexity(self, shape: Shape, data: list[Tokenised], batch: int = 8) -> float:
        """Held-out perplexity of ``shape`` with its LoRAs active (what `find` ranks shapes by)."""
        from amoebasearch.quality import model_perplexity

        return model_perplexity(self.smol, shape, data, batch=batch, pad_id=pad_token(self.loaded.tokenizer))


def load_supernet(directory: str | Path, model: str | None = None) -> Supernet:
    """Open a supernet directory; ``model`` overrides the recorded base reference (same signature)."""
    directory = Path(directory)
    base = read_base(directory)
    read_adapter_config(directory)  # its config and weights file are there, before the slow model load
    loaded = load(model or base["model"])
    check_base_signature(directory, base, loaded.model.config)
    plan = Plan.load(directory / "plan.json", loaded.model.config)
    space = space_from_dict(read_supernet_file(directory, "shape_space.json"), loaded.dims, plan)
    smol = SMoLModel.from_adapter(loaded.model, directory, plan.ordering)
    smol.eval()
    return Supernet(directory, loaded, plan, space, smol)
