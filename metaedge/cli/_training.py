"""What `metaedge train` and `metaedge pretrain` share: flags generated from their config classes, the run
directory and resume, the result report. Each command module only says which config class and texts."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from metaedge.cli._options import add_config_arguments, in_flag_terms, values_from_args
from metaedge.cli.main import CliError


def add_training_arguments(p: argparse.ArgumentParser, config_cls, command: str) -> None:
    from metaedge.train.config import DataConfig
    groups = add_config_arguments(p, DataConfig, command)
    add_config_arguments(p, config_cls, command, groups)
    r = groups["run"]
    r.add_argument("--run-dir", default=None, help="output directory [runs/<method>-<backbone>-<time>]")
    r.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR exactly where it stopped (its options are reused; only "
                        + ", ".join("--" + n.replace("_", "-") for n in sorted(_resumable_flags(config_cls)))
                        + " may change)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard scalars")
    r.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _resumable_flags(config_cls) -> list[str]:
    from metaedge.cli._options import flag_of
    import dataclasses
    return [flag_of(f).lstrip("-") for f in dataclasses.fields(config_cls) if f.metadata.get("resumable")]


def _stored_run(run_dir: str, command: str) -> dict:
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise CliError(f"--resume: {path} not found (is {run_dir!r} a metaedge run directory?)")
    with open(path, encoding="utf-8") as f:
        stored = json.load(f)
    if stored.get("command", "train") != command:
        raise CliError(f"--resume: {run_dir} is a `metaedge {stored.get('command', 'train')}` run; resume it with "
                       f"that command")
    if not (stored.get("data") or {}).get("options"):
        raise CliError(f"--resume: {run_dir} was not started from the command line (no stored data options); "
                       f"resume it with metaedge.train.fit(..., run_dir=..., resume=True)")
    return stored


def configs_from_args(args, config_cls, command: str):
    """``(config, data config, run_dir)`` of a new run, or of the run that ``--resume`` continues."""
    from metaedge.train.config import DataConfig
    try:
        given = values_from_args(args, config_cls, command)
        data_given = values_from_args(args, DataConfig, command)
        if args.resume:
            stored = _stored_run(args.resume, command)
            # the stored options, overridden by the flags given; the session's resume check refuses the changes
            # a resumed run cannot take
            config = config_cls.from_dict({**stored["config"], **given})
            data = DataConfig.from_dict({**stored["data"]["options"], **data_given})
            return config, data, args.resume
        config = config_cls.from_dict(given)
        data = DataConfig.from_dict(data_given)
    except (TypeError, ValueError) as exc:
        raise CliError(in_flag_terms(str(exc), (config_cls, DataConfig), command)) from None
    if config.episodes is None and config.time_budget_s is None:
        raise CliError("say how long to train: --episodes N and/or --time-budget DURATION")
    try:  # before minutes of data loading
        config.validate()
    except (TypeError, ValueError) as exc:
        raise CliError(in_flag_terms(str(exc), (config_cls, DataConfig), command)) from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.run_dir or os.path.join("runs", f"{config.method}-{config.backbone}-{stamp}")
    return config, data, run_dir


def run_training_command(args, config_cls, command: str):
    """Build the data and train; returns ``(model, result dict, data config)`` on rank 0, None on the others."""
    from metaedge.train.data.base import DataError
    from metaedge.train.data.sources import build_training_data
    from metaedge.train.trainer import run_training
    config, data_cfg, run_dir = configs_from_args(args, config_cls, command)
    try:
        data = build_training_data(data_cfg, command)
    except DataError as exc:
        raise CliError(str(exc)) from None
    if data.note:
        print(f"metaedge {command}: {data.note}", file=sys.stderr)
    if not args.json:
        extra = f" + unlabelled {data.unlabelled!r}" if data.unlabelled is not None else ""
        print(f"{command}ing {config.method} / {config.backbone} on {data.train!r}{extra}"
              + (f", validating on {data.val!r}" if data.val else "") + f" -> {run_dir}", file=sys.stderr)
    try:
        model = run_training(config, data.train, data.val, data.unlabelled, run_dir=run_dir,
                             resume=bool(args.resume), progress=not args.no_progress and not args.json,
                             tensorboard=not args.no_tensorboard, data_options=data_cfg.to_dict())
    except (ValueError, TypeError) as exc:
        from metaedge.train.config import DataConfig
        # the resume check names options: say them as flags; elsewhere only `name=value` is an option
        message = in_flag_terms(str(exc), (config_cls, DataConfig), command,
                                assignments_only=not str(exc).startswith("resume:"))
        raise CliError(message) from None
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    info = model.train_info
    best_dir = os.path.join(run_dir, "best")
    result = {"run_dir": os.path.abspath(run_dir),
              "checkpoint": os.path.abspath(best_dir if os.path.isdir(best_dir) else os.path.join(run_dir, "last")),
              "episodes": info["episodes"], "train_seconds": round(info["elapsed_s"], 2),
              "stopped_by": info["stopped_by"], "best_val_accuracy": info["best_val_accuracy"],
              "best_val_ci95": info["best_val_ci95"], "best_episode": info["best_episode"],
              "spec": model.spec.to_dict()}
    return model, result, data_cfg


def print_result(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    val_text = "no validation" if result["best_val_accuracy"] is None else (
        f"best validation {100 * result['best_val_accuracy']:.2f}% +- {100 * result['best_val_ci95']:.2f}% "
        f"at episode {result['best_episode']}")
    print(f"{result['episodes']} episodes in {result['train_seconds']:.0f}s ({result['stopped_by']}); {val_text}")
    print(f"checkpoint: {result['checkpoint']}")
    for rep in result.get("test", []):
        print(f"test {rep['ways']}-way {rep['shots']}-shot: {100 * rep['mean']:.2f}% +- {100 * rep['ci95']:.2f}%")
