"""The command line is derived from the config classes: every option has its flag, the help shows the config's
default, and parsing the flags of a config gives that config back."""
import argparse
import dataclasses
import inspect

import pytest

from metaedge.cli._options import add_config_arguments, flag_of, values_from_args
from metaedge.cli.main import build_parser
from metaedge.train.config import (METHOD_SHORTCUTS, DataConfig, PretrainConfig, TrainConfig, parse_duration)
from metaedge.train.options import cli_fields, field_default


def _subparser(name):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _argv_for(config, cls, command):
    """The flags that reproduce ``config`` (every exposed field, from its metadata)."""
    argv = []
    for f in cli_fields(cls, command):
        value = getattr(config, f.name)
        if f.metadata.get("key_values"):
            for key, v in value.items():
                argv += [flag_of(f), f"{key}={v}"]
            continue
        if isinstance(value, bool):
            if value != field_default(f) or value:
                argv.append(flag_of(f) if value else "--no-" + flag_of(f)[2:])
            continue
        if value is None:
            continue
        if isinstance(value, list):
            items = [str(v) for v in value]
            argv += [flag_of(f), *items] if f.metadata.get("nargs") else [flag_of(f), ",".join(items)]
            continue
        argv += [flag_of(f), str(value)]
    return argv


@pytest.mark.parametrize("cls,command", [(TrainConfig, "train"), (PretrainConfig, "pretrain")])
def test_every_config_field_is_a_flag_with_its_default_in_the_help(cls, command):
    parser = _subparser(command)
    by_dest = {a.dest: a for a in parser._actions}
    hidden = {f.name for f in dataclasses.fields(cls)} - {f.name for f in cli_fields(cls, command)}
    # the fields a command hides are the other command's only
    assert hidden <= ({"init", "unlabelled_ratio", "unlabelled_augment", "classes_per_batch", "adversarial",
                       "adv_eps", "adv_steps", "adv_alpha"} if command == "pretrain" else set())
    for f in cli_fields(cls, command):
        action = by_dest[f.name]
        assert action.option_strings == [flag_of(f)] or flag_of(f) in action.option_strings
        assert action.default is None  # "not given" - a resumed run keeps its stored value
        default = field_default(f)
        if f.metadata.get("default_text"):
            assert f"[{f.metadata['default_text']}]" in action.help
        elif default not in (None, False, {}):
            shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
            assert f"[{shown}]" in action.help, (f.name, action.help)
        assert action.help and action.help.strip(), f.name


@pytest.mark.parametrize("cls,command", [(TrainConfig, "train"), (PretrainConfig, "pretrain")])
def test_parsing_the_flags_of_a_config_gives_it_back(cls, command):
    config = cls(backbone="resnet12", backbone_options={"widths": [8, 16]}, method="maml" if command == "train"
                 else "byol", method_options={"inner_steps": 3}, ways=7, shots=2, queries=4, replacement=True,
                 batch_size=64, augment="glyphs", episodes=123, time_budget_s=90.0, optimizer="sgd", lr=0.05,
                 weight_decay=1e-4, momentum=0.8, schedule="step", warmup=3, step_size=10, gamma=0.3,
                 min_lr_ratio=0.1, label_smoothing=0.1, grad_clip=2.0, val_every=50, val_episodes=20, val_ways=3,
                 val_shots=2, val_queries=5, val_method="adapt_head", seed=7, checkpoint_every=25, log_every=5,
                 device="cpu", amp="off", channels_last="on", num_threads=1,
                 **({"init": "/tmp/ckpt", "unlabelled_ratio": 0.25, "unlabelled_augment": "natural",
                     "classes_per_batch": 8, "adversarial": "pgd", "adv_eps": 0.1, "adv_steps": 2, "adv_alpha": 0.05}
                    if command == "train" else {}))
    args = _subparser(command).parse_args(_argv_for(config, cls, command))
    assert cls.from_dict(values_from_args(args, cls, command)) == config
    assert values_from_args(_subparser(command).parse_args([]), cls, command) == {}


def test_data_flags_round_trip_and_eval_shares_them():
    data = DataConfig(data="omniglot:/x", size=32, color="gray", invert=False, mean=[0.5], std=[0.25], sets=["a", "b"],
                      alphabets=["c"], exclude_alphabets=["d"], rotations=[0, 90], mirror=True, split="test",
                      split_fractions=[0.5, 0.25, 0.25], split_by="group", on_error="skip", synthetic_classes=30,
                      synthetic_samples=5, data_seed=3, frame_step=4, max_frames=9, val_data="synthetic",
                      val_sets=["e"], val_alphabets=["f"], unlabelled="folder:/y")
    args = _subparser("train").parse_args(_argv_for(data, DataConfig, "train"))
    assert DataConfig.from_dict(values_from_args(args, DataConfig, "train")) == data
    eval_dests = {a.dest for a in _subparser("eval")._actions}
    assert {f.name for f in cli_fields(DataConfig, "eval")} <= eval_dests
    assert "val_split" not in eval_dests and "unlabelled" not in eval_dests


def test_shortcut_defaults_are_the_constructors():
    from metaedge.train.methods import method_class
    for sc in METHOD_SHORTCUTS:
        for method, default in sc.defaults.items():
            params = inspect.signature(method_class(method).__init__).parameters
            assert params[sc.key].default == default, (sc.key, method)


def test_a_new_option_needs_one_line():
    from metaedge.train.options import option

    @dataclasses.dataclass
    class WithTeacher(TrainConfig):
        distill_from: str | None = option(None, "teacher checkpoint", group="model", metavar="CHECKPOINT")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, WithTeacher, "train")
    args = parser.parse_args(["--distill-from", "t/best", "--time-budget", "2m"])
    assert values_from_args(args, WithTeacher, "train") == {"distill_from": "t/best", "time_budget_s": 120.0}
    assert parse_duration("1.5h") == 5400.0


def test_resume_rule_comes_from_the_metadata():
    assert TrainConfig.resumable() == {"episodes", "time_budget_s", "val_every", "val_episodes", "checkpoint_every",
                                       "log_every", "device", "num_threads"}
    stored = TrainConfig(episodes=5).to_dict()
    TrainConfig(episodes=9, num_threads=1).check_resume(stored)
    with pytest.raises(ValueError, match=r"cannot change.*lr: 0.001 -> 0.5"):
        TrainConfig(episodes=5, lr=0.5).check_resume(stored)
