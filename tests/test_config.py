"""One typed configuration: defaults <- YAML file <- environment <- CLI flags, validated."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from dataclasses import fields

import pytest

from wyoming_amanuensis.config import ConfigError, Settings, build_parser, load_settings, settings_from

SEED_ALIASES = {
    "USE_CUSTOM_DECODER": "fast_decoder",
    "USE_INT8_DECODER": "int8_decoder",
    "ENABLE_ALIGNMENT": "word_timestamps",
    "FAST_ALIGNMENT": "fast_alignment",
    "ENABLE_BATCH_DECODING": "batch_decoding",
    "BATCH_DECODE_SIZE": "batch_decode_size",
}


def load(argv=(), environ=None, config_file=None) -> Settings:
    return load_settings(build_parser().parse_args(list(argv)), environ=environ or {}, config_file=config_file)


def test_defaults():
    assert load() == Settings()
    assert load().uri == "tcp://0.0.0.0:10300" and load().max_utterance_s == 120.0 and load().model == "base"


def test_cli_wins_over_env_over_file_over_defaults(tmp_path):
    config = tmp_path / "amanuensis.yaml"
    config.write_text("beam-size: 2\nqueue_depth: 3\nmodel: tiny.en\nextra_models: [base]\nstreaming: false\n")
    environ = {"WYO_AMANUENSIS_BEAM_SIZE": "3", "WYO_AMANUENSIS_QUEUE_DEPTH": "5", "WYO_AMANUENSIS_CONFIG": str(config)}
    settings = load(["--beam-size", "4"], environ)
    assert settings.beam_size == 4  # CLI over env over file
    assert settings.queue_depth == 5  # env over file
    assert settings.model == "tiny.en" and settings.extra_models == ("base",)  # file over defaults
    assert settings.streaming is False
    assert settings.max_utterance_s == 120.0  # default
    # --config names the file too, and wins over the env's file
    other = tmp_path / "other.yaml"
    other.write_text("queue_depth: 7\nbeam_size: 6\n")
    settings = load(["--config", str(other)], {"WYO_AMANUENSIS_CONFIG": str(config)})
    assert (settings.queue_depth, settings.beam_size, settings.model) == (7, 6, "base")


@pytest.mark.parametrize("alias, name", SEED_ALIASES.items())
def test_seed_flag_names_are_env_aliases(alias, name):
    default = getattr(Settings(), name)
    value = "7" if name == "batch_decode_size" else ("0" if default else "1")
    expected = 7 if name == "batch_decode_size" else not default
    assert getattr(load(environ={alias: value}), name) == expected
    # The canonical name wins when both are set.
    canonical = f"WYO_AMANUENSIS_{name.upper()}"
    assert getattr(load(environ={alias: value, canonical: str(default)}), name) == default
    # And the CLI wins over both.
    if isinstance(default, bool):
        flag = f"--{name.replace('_', '-')}" if not default else f"--no-{name.replace('_', '-')}"
        assert getattr(load([flag], {canonical: str(default)}), name) == (not default)


def test_cli_value_forms():
    s = load(["--no-streaming", "--extra-models", "tiny.en, base", "--language", "de", "--zeroconf", "kitchen"])
    assert s.streaming is False and s.extra_models == ("tiny.en", "base") and s.language == "de"
    assert s.zeroconf == "kitchen"
    assert load(["--zeroconf"]).zeroconf == socket.gethostname()  # flag alone: the host name
    assert load(["--streaming"], {"WYO_AMANUENSIS_STREAMING": "off"}).streaming is True
    assert load(environ={"WYO_AMANUENSIS_LANGUAGE": ""}).language is None
    assert load(environ={"WYO_AMANUENSIS_EXTRA_MODELS": "a,b,,c"}).extra_models == ("a", "b", "c")
    # Endpointing: off unless asked; the bare flag follows each request's vad_sensitivity.
    assert load([]).vad_endpointing is None and load([]).endpoint_silence_s("aggressive") is None
    bare = load(["--vad-endpointing"])
    assert [bare.endpoint_silence_s(v) for v in ("default", "relaxed", "aggressive")] == [0.7, 1.25, 0.25]
    fixed = load(["--vad-endpointing", "0.5"])
    assert [fixed.endpoint_silence_s(v) for v in ("default", "aggressive")] == [0.5, 0.5]
    assert load(environ={"WYO_AMANUENSIS_VAD_ENDPOINTING": ""}).vad_endpointing is None


@pytest.mark.parametrize("argv, environ, yaml_text, option", [
    (["--queue-depth", "0"], {}, None, "queue_depth"),
    (["--vad-endpointing", "soon"], {}, None, "vad_endpointing"),
    (["--vad-pad-after-s", "9"], {}, None, "vad_pad_after_s"),
    (["--beam-size", "17"], {}, None, "beam_size"),
    (["--max-utterance-s", "-1"], {}, None, "max_utterance_s"),
    (["--partial-interval-s", "abc"], {}, None, "partial_interval_s"),
    (["--uri", "http://x:1"], {}, None, "uri"),
    (["--uri", "tcp://0.0.0.0"], {}, None, "uri"),
    ([], {"WYO_AMANUENSIS_THREADS": "many"}, None, "threads"),
    ([], {"WYO_AMANUENSIS_STREAMING": "maybe"}, None, "streaming"),
    ([], {"USE_INT8_DECODER": "perhaps"}, None, "int8_decoder"),
    ([], {"BATCH_DECODE_SIZE": "0"}, None, "batch_decode_size"),
    ([], {"WYO_AMANUENSIS_MQTT_PASSWORD_FILE": "/nonexistent/secret"}, None, "mqtt_password_file"),
    ([], {}, "queue_depth: 2.5\n", "queue_depth"),
    ([], {}, "encoder_backend: gpu\n", "encoder_backend"),
    ([], {}, "shutdown_timeout_s: -3\n", "shutdown_timeout_s"),
    ([], {}, "no_such_option: 1\n", "no_such_option"),
])
def test_invalid_values_name_the_option(tmp_path, argv, environ, yaml_text, option):
    config_file = None
    if yaml_text is not None:
        config_file = tmp_path / "c.yaml"
        config_file.write_text(yaml_text)
    with pytest.raises(ConfigError, match=option):
        load(argv, environ, str(config_file) if config_file else None)


def test_unreadable_or_bad_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(config_file=str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load(config_file=str(bad))


def test_choices_are_checked_by_the_cli():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--encoder-backend", "gpu"])


def test_help_documents_every_option_with_its_default():
    result = subprocess.run([sys.executable, "-m", "wyoming_amanuensis", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "(default: None)" not in text.replace("(default: None; env", "")  # no argparse placeholders
    parser = build_parser()
    by_dest = {a.dest: a for a in parser._actions}
    for f in fields(Settings):
        action = by_dest[f.name]
        flag = "--" + f.name.replace("_", "-")
        assert flag in action.option_strings and flag in text
        assert f"(default: {f.default!r}; env: WYO_AMANUENSIS_{f.name.upper()}" in action.help.replace("%%", "%")
        for alias in f.metadata["aliases"]:
            assert alias in action.help
    assert "--config" in text


def test_bad_flags_stop_the_server_at_start_up_with_the_option_named():
    for argv, env, option in [(["--queue-depth", "0"], {}, "queue_depth"),
                              ([], {"WYO_AMANUENSIS_MAX_UTTERANCE_S": "forever"}, "max_utterance_s"),
                              ([], {"ENABLE_ALIGNMENT": "sometimes"}, "word_timestamps")]:
        result = subprocess.run([sys.executable, "-m", "wyoming_amanuensis", *argv], capture_output=True, text=True,
                                timeout=60, env={**os.environ, **env})
        assert result.returncode == 2, result.stderr
        assert option in result.stderr


def test_settings_from_and_redaction():
    s = settings_from(mqtt_password="hunter2", queue_depth=2)
    assert s.queue_depth == 2 and s.redacted()["mqtt_password"] == "***"
    with pytest.raises(ConfigError, match="queue_depth"):
        settings_from(queue_depth=0)
    ns = argparse.Namespace()
    assert load_settings(ns, environ={}) == Settings()
