"""Config fields declared with `option` are the verbs' flags: one declaration reaches argparse (name,
help, type, choices, default) and comes back as the built dataclass."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from amoebasearch.cli import OneLineParser, build_parser
from amoebasearch.cli import find as find_cli
from amoebasearch.cli import profile as profile_cli
from amoebasearch.cli import train as train_cli
from amoebasearch.cli.options import add_options, build, field_default, given_flags, option_fields
from amoebasearch.options import comma_list, flag_name, flag_of, option, positive_int
from amoebasearch.plan import PlanConfig
from amoebasearch.profile.request import ProfileRequest
from amoebasearch.search.request import FindRequest
from amoebasearch.train import DataConfig, SMoLConfig, SpaceConfig, TrainConfig


@dataclass(kw_only=True)
class Sizes:
    """Sizes: how big things are."""

    width: int = option(8, type=positive_int, help="width (default 8)")
    depths: list[int] = option(default_factory=lambda: [1, 2], type=comma_list(int), help="depths")
    count: int = option(5, unset=True, type=positive_int, help="derived when not given")


@dataclass(kw_only=True)
class Switches:
    """Switches."""

    fast: bool = option(False, help="go fast")
    checked: bool = option(True, name="--no-check", help="skip the check")
    split: bool | None = option(None, negatable=True, help="split (default: the method's)")
    mode: str = option("a", name="--style", choices=("a", "b"), help="a or b")
    internal: float = 0.5  # no option: never a flag


@dataclass(kw_only=True)
class Throwaway(Switches, Sizes):
    """Both groups, flat."""

    name: str = option(help="required: no default")


def parser_for(*configs: type) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="t")
    add_options(parser, *configs)
    return parser


def test_a_new_field_is_a_flag_that_reaches_the_built_dataclass():
    parser = parser_for(Throwaway)
    args = parser.parse_args(["--name", "n", "--width", "3", "--depths", "4,5", "--fast", "--no-check", "--style", "b"])
    built = build(Throwaway, args)
    assert built == Throwaway(name="n", width=3, depths=[4, 5], fast=True, checked=False, mode="b")
    assert built.count == 5 and built.split is None and built.internal == 0.5
    assert build(Throwaway, parser.parse_args(["--name", "n", "--count", "2", "--no-split"])).count == 2
    assert build(Throwaway, parser.parse_args(["--name", "n", "--split"])).split is True
    assert not hasattr(args, "internal")
    # a derived value (what a verb checked or computed) goes over the flag's
    assert build(Throwaway, args, width=9, count=1).width == 9


def test_flags_read_as_declared_grouped_by_the_dataclass_that_declares_them():
    parser = parser_for(Throwaway)
    text = parser.format_help()
    for flag in ("--width WIDTH", "--depths DEPTHS", "--count COUNT", "--no-check", "--style {a,b}", "--split"):
        assert flag in text
    assert "--no-split" in text and "--internal" not in text
    titles = [group.title for group in parser._action_groups]
    assert titles[-3:] == ["sizes", "switches", "both groups, flat"]  # the docstring, up to its colon


def test_bad_values_and_missing_required_flags_are_one_line_usage_errors(capsys):
    parser = parser_for(Throwaway)
    for argv, message in [
        (["--name", "n", "--width", "0"], "argument --width: 0 must be at least 1"),
        (["--name", "n", "--style", "c"], "argument --style: invalid choice: 'c'"),
        (["--width", "2"], "the following arguments are required: --name"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err


def test_given_flags_names_only_what_differs_from_not_giving_it():
    parser = parser_for(Throwaway)
    assert given_flags(Throwaway, parser.parse_args(["--name", "n"])) == ["--name"]
    assert given_flags(Sizes, parser.parse_args(["--name", "n", "--count", "5", "--width", "8"])) == ["--count"]


def verb_parser(verb: str) -> argparse.ArgumentParser:
    verbs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return verbs.choices[verb]


VERB_CONFIGS = {
    "find": (FindRequest,),
    "train": (DataConfig, SpaceConfig, SMoLConfig, TrainConfig),
    "plan": (PlanConfig,),
    "profile": (ProfileRequest,),
}


@pytest.mark.parametrize("verb", sorted(VERB_CONFIGS))
def test_every_option_field_of_a_verb_is_one_of_its_flags(verb):
    flags = verb_parser(verb)._option_string_actions
    for config in VERB_CONFIGS[verb]:
        for config_field in option_fields(config):
            assert flags[flag_name(config_field)].dest == config_field.name


def test_the_verbs_parse_their_defaults_into_the_dataclass_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # find checks its --out folder
    parse = build_parser().parse_args
    assert find_cli.request_from(parse(["find", "--budget", "30ms"])) == FindRequest(budget_ms=30.0)
    trained = train_cli.configs(parse(["train", "--out", "s"]))
    assert trained == (DataConfig(), SpaceConfig(), SMoLConfig(), TrainConfig())
    assert build(PlanConfig, parse(["plan", "--out", "p.json"])) == PlanConfig()
    assert profile_cli.request_from(parse(["profile"])) == ProfileRequest()


def test_the_verbs_carry_given_flags_into_their_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parse = build_parser().parse_args
    request = find_cli.request_from(
        parse(
            ["find", "--budget", "0.03s", "--margin", "3%", "--profile", "t.csv", "--format", "gguf"]
            + ["--export", "e", "--eval-items", "7", "--pareto", "--out", "r", "--json"]
        )  # fmt: skip
    )
    assert (request.budget_ms, request.margin, request.table, request.export_format) == (30.0, 0.03, "t.csv", "gguf")
    assert (request.eval_items, request.pareto, request.out, request.progress) == (7, True, Path("r"), False)
    data, space, smol, loop = train_cli.configs(
        parse(
            ["train", "--out", "s", "--rank", "8", "--gate-noise", "0.5", "--no-shared-lora", "--no-distill"]
            + ["--seq-len", "64", "--min-depth", "2", "--steps", "3"]
        )  # fmt: skip
    )
    assert (smol.rank, smol.alpha, smol.noise, smol.shared, smol.num_loras) == (8, 16.0, 0.5, False, 5)
    assert (loop.distill, loop.balance, loop.steps, data.seq_len, space.min_depth) == (False, True, 3, 64, 2)
    _, _, plain, _ = train_cli.configs(parse(["train", "--out", "s", "--no-smol", "--alpha", "4"]))
    assert (plain.num_loras, plain.top_k, plain.alpha) == (1, 1, 4.0)
    plan = build(PlanConfig, parse(["plan", "--out", "p.json", "--method", "dp", "--search-dtype", "float32"]))
    assert (plan.depth_method, plan.split_ends, plan.search_dtype) == ("dp", True, "float32")
    profile = profile_cli.request_from(parse(["profile", "--estimate", "h100", "--batch", "1,8", "--dtype", "float16"]))
    assert (profile.estimate, profile.batch, profile.dtype, profile.runtime) == ("h100", [1, 8], "float16", "eager")


@pytest.mark.parametrize("config", [c for configs in VERB_CONFIGS.values() for c in configs], ids=lambda c: c.__name__)
def test_a_default_written_in_a_help_text_is_the_fields_default(config):
    for config_field in option_fields(config):
        written = re.search(r"\(default:? (-?\d[\d.]*(?:e-?\d+)?)(?=[),;:])", flag_of(config_field).help)
        default = field_default(config_field)
        if written and isinstance(default, (int, float)) and not isinstance(default, bool):
            assert float(written.group(1)) == default, flag_name(config_field)


def test_fields_without_an_option_stay_library_settings():
    assert {f.name for f in fields(TrainConfig)} - {f.name for f in option_fields(TrainConfig)} == {
        "weight_decay",
        "max_grad_norm",
    }
    assert "progress" not in {f.name for f in option_fields(FindRequest)}  # --json decides it


def test_a_switch_that_clears_a_field_must_be_named():
    with pytest.raises(TypeError, match="--no-"):
        option(True, help="would read as --checked, which clears it")
