"""`accelerate launch --num_processes 2` without --multi_gpu starts one process: the entry points say so."""

import os

import pytest

from llava.eval.data_parallel import LaunchInfo, launch_info

LAUNCH_KEYS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _accelerate_env(num_processes: str) -> dict[str, str]:
    """The variables accelerate's simple launcher adds for `accelerate launch --num_processes N -m ...`."""
    pytest.importorskip("accelerate")
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    args = launch_command_parser().parse_args(["--num_processes", num_processes, "-m", "llava.eval.model_vqa_loader"])
    args = _validate_launch_command(args)[0]
    assert not args.multi_gpu  # no GPU here: accelerate falls back to one process
    _cmd, env = prepare_simple_launcher_cmd_env(args)
    return {k: v for k, v in env.items() if os.environ.get(k) != v}


@pytest.fixture
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key in LAUNCH_KEYS or key.startswith("ACCELERATE_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_accelerate_fallback_to_one_process_is_reported(clean_env, capsys):
    for key, value in _accelerate_env("2").items():
        clean_env.setenv(key, value)
    assert launch_info() is None  # one process answers everything
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: accelerate launch started ONE process")
    assert "--multi_gpu" in err and "torchrun --nproc_per_node" in err


def test_single_process_launches_stay_quiet(clean_env, capsys):
    for key, value in _accelerate_env("1").items():
        clean_env.setenv(key, value)
    assert launch_info() is None
    clean_env.delenv("ACCELERATE_MIXED_PRECISION")
    clean_env.delenv("ACCELERATE_DYNAMO_BACKEND")
    clean_env.setenv("MASTER_ADDR", "10.0.0.1")  # a cluster's own variable, no accelerate launch
    assert launch_info() is None
    assert capsys.readouterr().err == ""


def test_torchrun_ranks_are_read(clean_env, capsys):
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                       "ACCELERATE_MIXED_PRECISION": "no"}.items():
        clean_env.setenv(key, value)
    assert launch_info() == LaunchInfo(2, 1, 1)
    assert capsys.readouterr().err == ""
