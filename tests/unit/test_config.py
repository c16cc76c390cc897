"""Config: TOML + command-line overrides, and every mistake named with its fix."""

from pathlib import Path

import pytest

from pitdist.config import ConfigError, JobConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text):
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


def test_every_shipped_job_file_loads():
    jobs = sorted((ROOT / "jobs").glob("*.toml"))
    assert jobs, "jobs/ holds no job files"
    for job in jobs:
        assert isinstance(load_config(job), JobConfig)


def test_toml_values_and_cli_overrides_combine(tmp_path):
    path = write(tmp_path, '[model]\npos_embed = "learned"\n[train]\nsteps = 7\n')
    cfg = load_config(
        path,
        [
            "--model.pos_embed",
            "none",
            "--train.batch_size=16",
            "--optim.lr",
            "0.5",
            "--data.shuffle",
            "false",
            "--parallel.zero_stage",
            "2",
        ],
    )
    assert cfg.model.pos_embed == "none"  # the command line wins
    assert cfg.train.steps == 7  # the file is kept where not overridden
    assert cfg.train.batch_size == 16 and cfg.optim.lr == 0.5
    assert cfg.data.shuffle is False and cfg.parallel.zero_stage == 2


def test_size_presets_and_explicit_width():
    cfg = load_config(None, ["--model.size", "base"])
    assert (cfg.model.width, cfg.model.num_layers, cfg.model.num_heads) == (768, 12, 12)
    cfg = load_config(None, ["--model.size", "tiny", "--model.heads", "4"])
    assert (cfg.model.width, cfg.model.num_layers, cfg.model.num_heads) == (192, 12, 4)


@pytest.mark.parametrize(
    "toml, overrides, message",
    [
        ('[model]\npos_embd = "none"\n', [], "model.pos_embd: unknown setting"),
        ("", ["--trian.steps", "3"], "trian: unknown setting"),
        (
            '[model]\npos_embed = "rope"\n',
            [],
            "model.pos_embed: 'rope' is not allowed; choose one of 'none', 'sincos', 'learned'",
        ),
        ('[train]\nsteps = "ten"\n', [], "train.steps: expected int, got 'ten'"),
        ("", ["--train.steps", "ten"], "train.steps: expected int, got 'ten'"),
        ("", ["--data.shuffle", "maybe"], "data.shuffle: expected bool"),
        ("[train]\nsteps = 0\n", [], "train.steps: must be >= 1, got 0"),
        ("", ["--optim.warmup_steps", "0"], "optim.warmup_steps: must be >= 1"),
        ("", ["--parallel.zero_stage", "3"], "parallel.zero_stage: must be 0, 1 or 2, got 3"),
        (
            "",
            ["--train.activation_checkpointing", "ful"],
            "train.activation_checkpointing: 'ful' is not allowed; choose one of 'none', 'full', 'selective', 'local'",
        ),
        ("", ["--train.selective_every", "0"], "train.selective_every: must be >= 1, got 0"),
        (
            "",
            ["--parallel.sp", "2", "--parallel.launcher", "single"],
            "parallel.launcher: 'single' runs one process but dp * sp = 2",
        ),
        ("", ["--data.loader", "ray_data", "--parallel.launcher", "local"], "data.loader: 'ray_data' feeds Ray Train"),
        (
            "",
            ["--parallel.sp", "3", "--train.batch_size", "32"],
            "train.batch_size: the ray_data loader gives each of the dp * sp = 3 workers",
        ),
        (
            "",
            ["--parallel.dp", "3", "--parallel.launcher", "local", "--train.batch_size", "32"],
            "train.batch_size: 32 images cannot be split evenly over parallel.dp = 3",
        ),
        ("", ["--model.dim", "66", "--model.heads", "3"], "model.pos_embed: 'sincos' splits the width into 4"),
        ("", ["--model.dim", "30"], "model.dim: 30 is not divisible by model.heads = 4"),
        ("", ["--model.shard_pos_embed", "true"], "model.shard_pos_embed: only applies to pos_embed = 'learned'"),
        ("model = 3\n", [], "model: is a section"),
        ("", ["--train.steps"], "override --train.steps: missing value"),
    ],
)
def test_mistakes_are_named(tmp_path, toml, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, toml), overrides)
    assert message in str(err.value)


def test_unknown_key_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="known keys here: .*pos_embed"):
        load_config(write(tmp_path, "[model]\nposembed = 1\n"))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[model\n"))


def test_round_trip_through_a_dict():
    from pitdist.config import config_from_dict

    cfg = load_config(None, ["--model.pos_embed", "learned", "--train.steps", "3"])
    assert config_from_dict(cfg.to_dict()) == cfg
