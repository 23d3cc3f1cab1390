"""Settings merge in one place: defaults < TOML < ANDY_HOST_* environment < flags."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from andy_host.config import SECTIONS, load_config, save_agent_config
from andy_host.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_precedence(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[agent]\nname = "from-file"\nmax_concurrency = 3\ncoordinator = "http://file:1"\n'
                    '[backend]\nkind = "llamacpp"\n')
    env = {"ANDY_HOST_AGENT_NAME": "from-env", "ANDY_HOST_AGENT_MAX_CONCURRENCY": "5"}
    config = load_config(path, env=env, flags={"agent": {"name": "from-flag", "coordinator": None}})
    assert config.agent.name == "from-flag"  # flag beats env and file
    assert config.agent.max_concurrency == 5  # env beats file
    assert config.agent.coordinator == ["http://file:1"]  # file beats default; None flag ignored
    assert config.backend.kind == "llamacpp"
    assert config.coordinator.port == 8080  # default


@pytest.mark.parametrize(
    "text, env, message",
    [
        ("[agent]\nnmae = 'x'\n", {}, "unknown option agent.nmae"),
        ("[nope]\n", {}, "unknown section"),
        ("[agent\n", {}, "not valid TOML"),
        ("", {"ANDY_HOST_AGENT_MAX_CONCURRENCY": "lots"}, "not a valid int"),
        ("[backend]\nkind = 'vllm'\n", {}, "backend.kind"),
        ("[agent]\ncoordinator = 'pool.example'\n", {}, "agent.coordinator"),
        ("[agent]\ncoordinator = ['http://a:1', 'b:2']\n", {}, "not 'b:2'"),
        ("[coordinator]\nredis_url = 'redis://r:6379/0'\n", {}, "replica_secret"),
    ],
)
def test_invalid_config_names_the_setting(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env=env)


def test_save_round_trips(tmp_path: Path) -> None:
    config = load_config(
        None,
        env={},
        flags={"agent": {"name": "saved", "max_concurrency": 4, "state_dir": str(tmp_path)},
               "backend": {"kind": "llamacpp", "extra_args": ["--mlock"]}},
    )
    target = save_agent_config(config, tmp_path / "saved.toml")
    again = load_config(target, env={})
    assert again.agent == config.agent and again.backend == config.backend


def test_every_option_is_documented_in_the_example() -> None:
    text = (ROOT / "config.example.toml").read_text()
    documented = tomllib.loads(text)
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            assert f.name in documented.get(section, {}), f"{section}.{f.name} missing from config.example.toml"
            comment = re.search(rf"((?:^#.*\n)+)(?:^\w+ = .*\n)*^{f.name} = ", text, flags=re.M)
            assert comment, f"{section}.{f.name} has no comment in config.example.toml"
    load_config(ROOT / "config.example.toml", env={})  # the example itself is valid


def test_several_coordinators(tmp_path: Path) -> None:
    """agent.coordinator: a TOML list, or URLs separated by commas in the environment."""
    path = tmp_path / "c.toml"
    path.write_text('[agent]\ncoordinator = ["http://a:1", "https://b:2"]\n')
    assert load_config(path, env={}).agent.coordinator == ["http://a:1", "https://b:2"]
    env = {"ANDY_HOST_AGENT_COORDINATOR": "http://a:1,http://c:3"}
    assert load_config(path, env=env).agent.coordinator == ["http://a:1", "http://c:3"]
