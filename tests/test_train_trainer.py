"""The loop: resume continues bit-for-bit, a killed run loses at most the steps since its checkpoint."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import tiny_model

from amoebasearch.data.instructions import Tokenised
from amoebasearch.errors import UsageError
from amoebasearch.shape import ShapeSpace
from amoebasearch.train.smol import SMoLConfig, SMoLModel
from amoebasearch.train.trainer import TrainConfig, train

LOOP = dict(batch=2, sandwich=3, seed=3, lr=5e-3)


def dataset(n: int = 10, length: int = 12) -> list[Tokenised]:
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 97, (n, length), generator=gen).tolist()
    return [Tokenised(tuple(r), tuple([-100] * 3 + r[3:])) for r in rows]


def setup(num_loras: int = 3, top_k: int = 2):
    torch.manual_seed(11)  # same LoRA init in every run
    smol = SMoLModel(tiny_model(), SMoLConfig(num_loras=num_loras, top_k=top_k, rank=4, dropout=0.1))
    return smol, ShapeSpace(smol.dims, ffn_step=32, min_depth=2)


class Killed(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    smol, space = setup()
    full = train(smol, space, dataset(), TrainConfig(steps=6, save_every=3, **LOOP), tmp_path / "a", progress=False)

    smol, space = setup()
    first = train(smol, space, dataset(), TrainConfig(steps=3, save_every=3, **LOOP), tmp_path / "b", progress=False)
    smol, space = setup()  # a new process: fresh model, state only from the checkpoint
    rest = train(
        smol, space, dataset(), TrainConfig(steps=6, save_every=3, **LOOP), tmp_path / "b", resume=True, progress=False
    )
    assert first + rest == full
    rows = list(csv.DictReader((tmp_path / "b" / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [s for s in range(1, 7) for _ in range(3)]


def test_killed_run_loses_at_most_the_steps_since_the_last_checkpoint(tmp_path):
    smol, space = setup()
    full = train(smol, space, dataset(), TrainConfig(steps=6, save_every=2, **LOOP), tmp_path / "a", progress=False)

    def kill_at_5(step, losses):
        if step == 5:
            raise Killed

    smol, space = setup()
    out = tmp_path / "b"
    with pytest.raises(Killed):
        train(
            smol, space, dataset(), TrainConfig(steps=6, save_every=2, **LOOP), out, progress=False, on_step=kill_at_5
        )
    with (out / "train_log.csv").open("a") as log:
        log.write("1")  # a row cut mid-write: step 10-19's row after its first digit reads as step 1
    smol, space = setup()
    redone = []
    rest = train(
        smol,
        space,
        dataset(),
        TrainConfig(steps=6, save_every=2, **LOOP),
        out,
        resume=True,
        progress=False,
        on_step=lambda step, losses: redone.append(step),
    )
    assert redone == [5, 6], "resume should restart right after the step-4 checkpoint"
    assert rest == full[4:]
    steps = [int(r["step"]) for r in csv.DictReader((out / "train_log.csv").open())]
    assert steps == sorted(steps) and len(steps) == 6 * 3, "the log keeps no rows of the lost step"


def test_resume_refuses_changed_settings(tmp_path):
    smol, space = setup()
    train(smol, space, dataset(), TrainConfig(steps=2, save_every=2, **LOOP), tmp_path, progress=False)
    changed = {**LOOP, "lr": 1e-3}
    with pytest.raises(UsageError, match="settings differ"):
        train(smol, space, dataset(), TrainConfig(steps=4, **changed), tmp_path, resume=True, progress=False)


def test_resume_before_the_first_checkpoint_starts_over(tmp_path):
    # a run killed before its first checkpoint lost nothing: resuming it is the fresh run
    smol, space = setup()
    fresh = train(smol, space, dataset(), TrainConfig(steps=2, **LOOP), tmp_path / "fresh", progress=False)
    smol, space = setup()
    resumed = train(
        smol, space, dataset(), TrainConfig(steps=2, **LOOP), tmp_path / "none", resume=True, progress=False
    )
    assert resumed == fresh


def test_too_little_data_is_refused(tmp_path):
    smol, space = setup()
    with pytest.raises(UsageError, match="cannot fill a micro-batch"):
        train(smol, space, dataset(n=1), TrainConfig(steps=2, **{**LOOP, "batch": 2}), tmp_path / "o", progress=False)


def test_training_lowers_the_largest_subnets_loss(tmp_path):
    # A wide-init model: with the default 0.02 init the frozen LM head caps how far the logits can move.
    torch.manual_seed(0)
    smol = SMoLModel(tiny_model(initializer_range=0.5), SMoLConfig(num_loras=1, top_k=1, rank=4))
    space = ShapeSpace(smol.dims, ffn_step=32, min_depth=2)
    loop = TrainConfig(steps=15, lr=1e-2, batch=2, sandwich=2)
    history = train(smol, space, dataset(n=2, length=16), loop, tmp_path, progress=False)
    assert history[-1][0] < 0.2 * history[0][0]


def test_no_smol_balance_and_distill_switches_run(tmp_path):
    for name, config, loop in [
        ("no-smol", dict(num_loras=1, top_k=1), dict(LOOP)),
        ("no-balance", {}, {**LOOP, "balance": False}),
        ("no-distill", {}, {**LOOP, "distill": False}),
    ]:
        smol, space = setup(**config)
        history = train(smol, space, dataset(), TrainConfig(steps=2, **loop), tmp_path / name, progress=False)
        assert len(history) == 2 and all(len(h) == 3 for h in history)


def test_a_checkpoint_moved_aside_by_a_kill_mid_replace_is_resumed_from(tmp_path):
    """`atomic.directory` moves the old checkpoint aside, then renames the new one in: a kill between
    the two leaves no checkpoint/ but an intact one beside it, which resume puts back."""
    smol, space = setup()
    full = train(smol, space, dataset(), TrainConfig(steps=6, save_every=3, **LOOP), tmp_path / "a", progress=False)
    smol, space = setup()
    out = tmp_path / "b"
    train(smol, space, dataset(), TrainConfig(steps=3, save_every=3, **LOOP), out, progress=False)
    aside = out / ".checkpoint-old-x1y2"
    aside.mkdir()
    (out / "checkpoint").rename(aside / "checkpoint")
    smol, space = setup()
    rest = train(smol, space, dataset(), TrainConfig(steps=6, save_every=3, **LOOP), out, resume=True, progress=False)
    assert rest == full[3:] and not aside.exists()


def test_a_damaged_checkpoint_is_named_not_a_traceback(tmp_path):
    smol, space = setup()
    train(smol, space, dataset(), TrainConfig(steps=2, save_every=2, **LOOP), tmp_path, progress=False)
    (tmp_path / "checkpoint" / "optimizer.safetensors").write_bytes(b"\x00\x01")
    smol, space = setup()
    with pytest.raises(UsageError, match="checkpoint .* cannot be read"):
        train(smol, space, dataset(), TrainConfig(steps=4, **LOOP), tmp_path, resume=True, progress=False)
    (tmp_path / "checkpoint" / "state.json").write_text("")
    with pytest.raises(UsageError, match="checkpoint state .* is not valid JSON"):
        train(smol, space, dataset(), TrainConfig(steps=4, **LOOP), tmp_path, resume=True, progress=False)
