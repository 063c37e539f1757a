"""One typed configuration for everything: engine, server, telemetry, NPU.

Sources, lowest to highest precedence: the defaults below, an optional YAML
file (``--config``), environment variables (``WYO_AMANUENSIS_<FIELD>`` plus a
few legacy aliases), and command-line flags. Every field is declared once here
with its help text; the CLI, ``--help``, the env names and the add-on's run
script are all derived from, or checked against, this table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import urlparse

import yaml

from .home_assistant import websocket_url
from .request import ENDPOINT_SILENCE_S

ENV_PREFIX = "WYO_AMANUENSIS_"

ENCODER_BACKENDS = ("auto", "npu", "cuda", "cpu")
CPU_RUNTIMES = ("onnx", "torch")
NPU_INSTR_UNITS = ("words", "bytes")
# The one table of NPU precisions: name -> (split activations, split weights) into bfloat16
# hi + lo parts (what each costs and buys: encoders/npu_device.py). Validated here, where a
# value enters; the NPU host code runs by it.
NPU_PRECISIONS = {"bf16": (False, False), "bf16x2": (True, False), "bf16x3": (True, True)}


class ConfigError(ValueError):
    """An invalid option value; the message names the option."""


def _opt(default: Any, help: str, *, aliases: Sequence[str] = (), choices: Sequence[str] = (), secret: bool = False):
    return field(
        default=default,
        metadata={"help": help, "aliases": tuple(aliases), "choices": tuple(choices), "secret": secret},
    )


@dataclass
class Settings:
    # --- engine -------------------------------------------------------------
    model: str = _opt("base", "Default model: a bundled name (base, tiny.en) or a directory holding a CTranslate2 Whisper model (model.bin, config.json, tokenizer.json).")
    extra_models: tuple = _opt((), "More models to load at start-up, selectable per request by the transcribe event's name (comma-separated in env/YAML lists).")
    language: Optional[str] = _opt(None, "Language code to force (e.g. en); empty means auto-detect per request unless the client sends one.")
    beam_size: int = _opt(1, "Beam width for decoding English (and every language when beam_size_non_english equals it); 1 is greedy (fastest).")
    beam_size_non_english: int = _opt(5, "Beam width for languages other than English, given or detected (multilingual models). Measured on corpus_ml: beam 5 takes pooled WER from 32.0 to 25.0 % (faster-whisper beam 5: 26.4 %) at about greedy's time (0.18x faster-whisper's); English stays greedy, where the beam does not help.")
    beam_like_ctranslate2: bool = _opt(True, "Beam search ranks and finishes readings as CTranslate2 (faster-whisper, length_penalty 1, patience 1) does: by log-probability per text token (end-of-text not counted), and only the beam-width best candidates of a step may finish. Off: per token counting end-of-text, and an end-of-text ranked below the beam width also finishes a reading (the search stops sooner). Measured on corpus_ml (language given): pooled WER 25.4 -> 25.0 % (better in de, fr, pt, ro; one word worse in es and pl); fed the same encoder output, CTranslate2's own decoder gives exactly our tokens on 102 instead of 95 of 141 commands. English is greedy: unchanged.")
    encoder_backend: str = _opt("auto", "Where the encoder runs: auto tries npu, then cuda, then cpu.", choices=ENCODER_BACKENDS)
    cpu_runtime: str = _opt("onnx", "What runs the model on the CPU: onnx (ONNX Runtime graphs written from the model at its first start and kept in cache_dir; torch is never imported, which halves the memory and start-up) or torch (the torch modules; the CUDA and NPU backends always use them). Measured in benchmarks/RESULTS.md, session 8.", choices=CPU_RUNTIMES)
    int8_decoder: bool = _opt(True, "Quantise the decoder's linear layers to int8 (per-channel dynamic quantisation; CPU only). Cuts the decoder's per-token cost about 4x at equal corpus WER.", aliases=("USE_INT8_DECODER",))
    language_full_window_below: float = _opt(0.5, "Short commands that name no language: when the language detected on the short window (the speech spliced onto cached silence) has a probability below this, it is detected again on the full 30 s window, as faster-whisper does (one more encoder pass for those commands only). 0 = never. Measured on corpus_ml, language auto-detected (benchmarks/RESULTS.md, session 6): 0.5 takes language ID from 70.9 to 74.5 % (faster-whisper beam 5: 72.3 %) and the median command from 208 to 245 ms; 0.3 reaches 72.3 %, 0.9 costs a full window on most commands.")
    int8_decoder_bits: int = _opt(8, "int8 decoder: activation precision, each token's own range in 2^bits steps (per-row scales: batched and solo decoding agree). 8 also puts the weights on CTranslate2's grid (max|w|/127 per channel, none clipped); it needs AVX512-VNNI and becomes 7 on CPUs without it. 7 is torch's recipe (its weight observer, 128 steps). The torch runtime only: the ONNX runtime's int8 layers ask onnxruntime's own kernel when their graphs are built (8 bits where its sums are exact, else 7-bit activations on the same weights). Measured (benchmarks/RESULTS.md, session 6, language given): 7 -> 8 takes English WER 6.1 -> 5.1 %, corpus_ml 25.0 -> 25.2 % with 5/11 -> 8/11 languages within 1 point of faster-whisper beam 5, at the same speed; long audio unchanged (3.6 / 3.7 %).")
    int8_encoder: bool = _opt(False, "Quantise the CPU encoder's linear layers to int8 (per-channel weights, a scale per activation row, as the decoder's; torch CPU runtime only): the encoder about 1.9x faster (91 -> 48 ms per command, 1 thread) on a quarter of the weight memory; WER 6.1 -> 6.6 % on corpus, 25.4 -> 26.2 % on corpus_ml (benchmarks/RESULTS.md), hence off.")
    fast_decoder: bool = _opt(True, "Short-command path: encode only the speech plus a margin and splice the cached silence encoding (and its cross-attention keys/values) for the rest of the 30 s window. Off = always encode the full window.", aliases=("USE_CUSTOM_DECODER",))
    splice_margin_s: float = _opt(0.5, "Seconds of padding encoded after the speech before the cached silence tail (fast decoder only).")
    silence_chunk: int = _opt(50, "Fast decoder: the short window's encoder layers also attend to the cached silence tail's keys, pooled in chunks of this many positions; 0 = no silence context (less accurate).")
    decoder_tail_chunk: int = _opt(10, "Fast decoder: pool the silence tail's cross-attention keys in chunks of this many positions (1 = exact, no pooling).")
    word_timestamps: bool = _opt(False, "Word-level timestamps from cross-attention alignment (one extra decoder pass).", aliases=("ENABLE_ALIGNMENT",))
    fast_alignment: bool = _opt(True, "Align from the cross-attention recorded during decoding instead of a second teacher-forced pass.", aliases=("FAST_ALIGNMENT",))
    condition_on_previous_text: bool = _opt(False, "Long audio (over 30 s, decoded in consecutive windows): prompt each window with the text decoded before it, as openai-whisper does by default. Off by default: on the corpus's 117 s utterance it made the model skip 10 of 35 sentences (benchmarks/bench_long.py).")
    batch_decoding: bool = _opt(False, "Decode several queued requests together in one batch.", aliases=("ENABLE_BATCH_DECODING",))
    batch_decode_size: int = _opt(4, "Largest batch when batch decoding is on.", aliases=("BATCH_DECODE_SIZE",))
    threads: int = _opt(0, "CPU threads (onnxruntime's or torch's) of each engine worker; 0 = the cores shared out between the workers (all of them with one).")
    workers: int = _opt(1, "Requests the engine computes at once, each on its own thread. 1 gives a lone command every core; 2 or more compute more commands per second when several wait at once (measured by benchmarks/bench_load.py), a lone one more slowly unless threads is set.")
    cache_dir: Optional[str] = _opt(None, "Folder for what start-up computes from each model's weights, keyed by the model file, checked on read and rebuilt when stale or corrupt: on the ONNX runtime one folder per model and decoder precision with its graphs and silence arrays (about 350 MB for base, written in about 5 s at its first start); on the torch runtime the model as the engine uses it (converted and int8-quantised; about 240 MB for base) and the fast decoder's silence encoding (about 40 MB). A restart then skips parsing model.bin, the quantisation and the encoder's 30 s silence pass. Default $XDG_CACHE_HOME/amanuensis (~/.cache/amanuensis); none = no disk cache.")
    preload: bool = _opt(True, "Load the models in the background as soon as the server starts; off = at the first request. Either way the port answers describe at once and requests wait for the load.")
    unload_after_s: float = _opt(0.0, "Free the models' memory after this many seconds without a request; the next request loads them again and waits for it. 0 = never unload.")
    # --- names (biasing.py): the request's transcript_names/terms and Home Assistant's names
    names_boost: float = _opt(0.0, "Bias decoding toward the known names: log-probability bonus for a token that continues a name (half of it for one that starts a name); 0 = off (measured: it fixes fewer names than names_snap and starts names that were not said).")
    names_snap: float = _opt(0.45, "After decoding, a run of words whose letters are at least this alike (0..1) a known name, sharing a word with it or alike word by word, is a candidate reading; 0 = off.")
    names_snap_margin: float = _opt(8.0, "A candidate name reading replaces the decoded words when the model, teacher-forced over the same audio, finds it at most this many nats less likely (one batched decoder pass, only when there is a candidate).")
    names_prompt: bool = _opt(False, "Also put the names in Whisper's prompt (wyoming-faster-whisper's way): the decoder reprocesses it on every request, so it costs more with every name.")
    # --- server -------------------------------------------------------------
    uri: str = _opt("tcp://0.0.0.0:10300", "Where to listen: tcp://HOST:PORT, unix://PATH or stdio://.")
    max_utterance_s: float = _opt(120.0, "Longest utterance accepted; longer audio is refused with an error event. Audio over 30 s is transcribed in consecutive 30 s windows (a dictated note, a request to a language model).")
    queue_depth: int = _opt(64, "Requests that may wait for the engine; a client beyond that gets a busy error carrying retry_after_s. Measured (benchmarks/bench_load.py, one core): 50 commands at once all answered within 6.6 s with 64, 2 busy with 16.")
    streaming: bool = _opt(True, "Offer streaming partial transcripts to clients that ask for them.")
    partial_interval_s: float = _opt(1.0, "Minimum seconds of new audio between partial transcripts.")
    # --- voice activity (vad.py, utterance.py, speculation.py) ----------------
    vad_trim: bool = _opt(True, "Transcribe the utterance only up to vad_pad_after_s after the last speech the VAD found, not the silence or noise the client sends after it, so the words do not change with how much of it there is; audio with no speech found is transcribed whole. The start is kept: trimming it lost quiet first words (benchmarks/bench_trim.py).")
    vad_pad_after_s: float = _opt(0.5, "Seconds of audio kept after the last speech the VAD found.")
    vad_threshold: float = _opt(0.5, "Silero VAD speech probability that starts a speech run (a run ends 0.15 below it).")
    speculate: bool = _opt(True, "Speculative finals: when the speech pauses, transcribe what was said so far in the background (below every waiting final in priority); if no speech follows, that transcript is the answer the moment audio-stop comes.")
    speculate_pause_s: float = _opt(0.5, "Pause after speech, in seconds, before a speculative final starts; never less than vad_pad_after_s (until then the window is still growing, so a speculation could not match the final's).")
    vad_min_speech_s: float = _opt(0.3, "Server endpointing ends a command only after this much speech was heard (Home Assistant's own rule): a click or a breath before the command does not end it. Measured by benchmarks/bench_endpoint.py: at 0.25 s of silence it turns 18 early cuts in 1065 noisy commands into 1.")
    vad_endpointing: Optional[float] = _opt(None, "End a command after this many seconds of silence the server's VAD finds, answer at once and ignore the rest of its audio (tells clients requires_external_vad: false). The flag without a value follows each request's vad_sensitivity as Home Assistant does: 0.7 s, relaxed 1.25 s, aggressive 0.25 s (0 in env/YAML). Off when empty.")
    zeroconf: Optional[str] = _opt(None, "Advertise the server over zeroconf under this name (flag without a value uses the hostname).")
    shutdown_timeout_s: float = _opt(10.0, "On SIGTERM, how long in-flight utterances may take to finish.")
    debug: bool = _opt(False, "Debug logging.")
    # --- MQTT telemetry -----------------------------------------------------
    mqtt_host: Optional[str] = _opt(None, "MQTT broker host; telemetry is off when empty.")
    mqtt_port: int = _opt(1883, "MQTT broker port.")
    mqtt_username: Optional[str] = _opt(None, "MQTT user name.")
    mqtt_password: Optional[str] = _opt(None, "MQTT password.", secret=True)
    mqtt_password_file: Optional[str] = _opt(None, "File holding the MQTT password (wins over mqtt_password).")
    mqtt_tls: bool = _opt(False, "Connect to the broker over TLS.")
    mqtt_ca_file: Optional[str] = _opt(None, "CA certificate file for TLS (system CAs when empty).")
    mqtt_cert_file: Optional[str] = _opt(None, "Client certificate file for TLS.")
    mqtt_key_file: Optional[str] = _opt(None, "Client key file for TLS.")
    mqtt_client_id: Optional[str] = _opt(None, "MQTT client id (default amanuensis-<instance>).")
    instance: str = _opt(socket.gethostname() or "amanuensis", "Instance name used in topics and entity ids (default: host name).")
    mqtt_topic_prefix: Optional[str] = _opt(None, "Topic prefix (default amanuensis/<instance>).")
    mqtt_discovery_prefix: str = _opt("homeassistant", "Home Assistant MQTT discovery prefix.")
    mqtt_qos: int = _opt(0, "QoS of telemetry messages (0, 1 or 2).")
    mqtt_include_text: bool = _opt(False, "Include transcript text in per-request telemetry (off for privacy).")
    mqtt_stats_interval_s: float = _opt(60.0, "Seconds between periodic stats messages.")
    mqtt_queue_size: int = _opt(256, "Telemetry messages buffered while the broker is slow or away; the oldest are dropped beyond this.")
    # --- names from Home Assistant (home_assistant.py) -------------------------
    ha_url: Optional[str] = _opt(None, "Home Assistant to read the names a speaker may say from (entities exposed to Assist with their aliases, their areas and floors, kept current): its websocket URL (ws://homeassistant.local:8123/api/websocket) or its base URL (http://homeassistant.local:8123; /api/websocket is added). Off when empty; the add-on passes ws://supervisor/core/websocket.")
    ha_token: Optional[str] = _opt(None, "Long-lived access token of a Home Assistant administrator (reading what is exposed to Assist needs one); in the add-on, the Supervisor's token.", aliases=("SUPERVISOR_TOKEN",), secret=True)
    ha_token_file: Optional[str] = _opt(None, "File holding the access token (wins over ha_token; read again on every connection attempt).")
    ha_refresh_s: float = _opt(300.0, "Seconds between full re-reads of the names. Registry changes (entities, devices, areas, floors, what is exposed) are read within seconds of their event anyway; this catches the rest, such as entities without a registry entry.")
    # --- NPU ----------------------------------------------------------------
    npu_kernel_dir: Optional[str] = _opt(None, "Folder with the NPU kernel build (final.xclbin, insts.bin); default: the package's npu/build or /usr/share/amanuensis/npu.")
    npu_device_index: int = _opt(0, "XRT device index of the NPU.")
    npu_precision: str = _opt("bf16x3", "NPU matrix-product precision: bf16 (one launch per tile), bf16x2 or bf16x3 (operands split into bf16 parts, 2 or 3 launches, near float32).", choices=NPU_PRECISIONS)
    npu_instr_units: str = _opt("words", "How the instruction count is passed to the kernel: 32-bit words (older mlir-aie) or bytes (newer).", choices=NPU_INSTR_UNITS)

    # ------------------------------------------------------------------------
    @property
    def topic_prefix(self) -> str:
        return self.mqtt_topic_prefix or f"amanuensis/{self.instance}"

    @property
    def vad_enabled(self) -> bool:
        """Whether utterances need the VAD at all."""
        return self.vad_trim or self.speculate or self.vad_endpointing is not None

    def endpoint_silence_s(self, vad_sensitivity: str) -> Optional[float]:
        """Silence that ends a command here, or None where the client ends it (audio-stop)."""
        if self.vad_endpointing is None:
            return None
        return self.vad_endpointing or ENDPOINT_SILENCE_S.get(vad_sensitivity, ENDPOINT_SILENCE_S["default"])

    @property
    def telemetry_enabled(self) -> bool:
        return bool(self.mqtt_host)

    def silence_cache_dir(self) -> Optional[Path]:
        """Where the silence encodings are cached on disk, or None for no disk cache."""
        if self.cache_dir is not None:
            return None if self.cache_dir.strip().lower() == "none" else Path(self.cache_dir).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "amanuensis"

    def cpu_threads(self) -> int:
        """CPU threads (onnxruntime intra-op, or torch) for each engine worker."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)

    def model_names(self) -> list[str]:
        names = [self.model] + [m for m in self.extra_models if m != self.model]
        return names

    def validate(self) -> "Settings":
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"invalid value for option '{name}' ({getattr(self, name)!r}): {why}")

        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise bad(f.name, f"must be one of {', '.join(choices)}")
        if self.beam_size < 1 or self.beam_size > 16:
            raise bad("beam_size", "must be between 1 and 16")
        if self.beam_size_non_english < 1 or self.beam_size_non_english > 16:
            raise bad("beam_size_non_english", "must be between 1 and 16")
        if not 0 < self.max_utterance_s <= 600:
            raise bad("max_utterance_s", "must be > 0 and at most 600")
        if self.queue_depth < 1:
            raise bad("queue_depth", "must be at least 1")
        if not 0.0 <= self.language_full_window_below <= 1.0:
            raise bad("language_full_window_below", "must be between 0 and 1")
        if self.int8_decoder_bits not in (7, 8):
            raise bad("int8_decoder_bits", "must be 7 or 8")
        if self.splice_margin_s < 0 or self.splice_margin_s > 30:
            raise bad("splice_margin_s", "must be between 0 and 30")
        if self.silence_chunk < 0 or self.silence_chunk > 1500:
            raise bad("silence_chunk", "must be between 0 and 1500")
        if self.decoder_tail_chunk < 1 or self.decoder_tail_chunk > 1500:
            raise bad("decoder_tail_chunk", "must be between 1 and 1500")
        if self.batch_decode_size < 1:
            raise bad("batch_decode_size", "must be at least 1")
        if self.unload_after_s < 0:
            raise bad("unload_after_s", "must be 0 (never) or more seconds")
        if self.threads < 0:
            raise bad("threads", "must be 0 (all cores) or more")
        if self.workers < 1:
            raise bad("workers", "must be at least 1")
        if not 0 < self.mqtt_port < 65536:
            raise bad("mqtt_port", "must be a TCP port (1-65535)")
        if self.mqtt_qos not in (0, 1, 2):
            raise bad("mqtt_qos", "must be 0, 1 or 2")
        if self.mqtt_stats_interval_s <= 0:
            raise bad("mqtt_stats_interval_s", "must be > 0")
        if self.mqtt_queue_size < 1:
            raise bad("mqtt_queue_size", "must be at least 1")
        if self.partial_interval_s <= 0:
            raise bad("partial_interval_s", "must be > 0")
        for name in ("vad_pad_after_s", "speculate_pause_s", "vad_min_speech_s"):
            if not 0 <= getattr(self, name) <= 5:
                raise bad(name, "must be between 0 and 5 seconds")
        if not 0 < self.vad_threshold < 1:
            raise bad("vad_threshold", "must be between 0 and 1")
        if self.vad_endpointing is not None and not 0 <= self.vad_endpointing <= 10:
            raise bad("vad_endpointing", "must be between 0 (follow vad_sensitivity) and 10 seconds")
        if self.shutdown_timeout_s < 0:
            raise bad("shutdown_timeout_s", "must be >= 0")
        if not any(self.uri.startswith(s) for s in ("tcp://", "unix://", "stdio://")):
            raise bad("uri", "must start with tcp://, unix:// or stdio://")
        if self.uri.startswith("tcp://"):
            try:
                parsed = urlparse(self.uri)
                port = parsed.port
            except ValueError as err:
                raise bad("uri", f"not a valid tcp://HOST:PORT address ({err})") from None
            if not parsed.hostname or port is None:
                raise bad("uri", "tcp:// needs a host and a port, e.g. tcp://0.0.0.0:10300")
        if self.uri.startswith("unix://") and not urlparse(self.uri).path:
            raise bad("uri", "unix:// needs a socket path, e.g. unix:///run/amanuensis.sock")
        if self.ha_url:
            try:
                websocket_url(self.ha_url)
            except ValueError as err:
                raise bad("ha_url", str(err)) from None
            if not (self.ha_token or self.ha_token_file):
                raise bad("ha_url", "needs an access token: set ha_token or ha_token_file")
        if self.ha_refresh_s < 1:
            raise bad("ha_refresh_s", "must be at least 1 second")
        for name in ("mqtt_password_file", "mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file", "ha_token_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise bad(name, "file does not exist")
        return self

    def mqtt_password_value(self) -> Optional[str]:
        if self.mqtt_password_file:
            return Path(self.mqtt_password_file).read_text(encoding="utf-8").strip()
        return self.mqtt_password

    def ha_token_value(self) -> Optional[str]:
        """The Home Assistant token, the file read now (OSError if it cannot be)."""
        if self.ha_token_file:
            return Path(self.ha_token_file).read_text(encoding="utf-8").strip()
        return self.ha_token

    def redacted(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = "***" if (f.metadata.get("secret") and value) else value
        return out


# ---------------------------------------------------------------------------
# Coercion from strings (env vars, YAML scalars, CLI)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _field_kind(f: dataclasses.Field) -> str:
    t = str(f.type)
    for kind in ("bool", "int", "float", "tuple"):
        if kind in t:
            return kind
    return "str"


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    kind = _field_kind(f)
    optional = "Optional" in str(f.type)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"invalid value for option '{f.name}': a value is required")
    if optional and isinstance(value, str) and value.strip() == "":
        return None
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in _TRUE:
                return True
            if s in _FALSE:
                return False
            raise ValueError("expected true or false")
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("expected an integer")
            return int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if kind == "tuple":
            if isinstance(value, (list, tuple)):
                return tuple(str(v).strip() for v in value if str(v).strip())
            return tuple(v.strip() for v in str(value).split(",") if v.strip())
        s = str(value)
        if optional and s.strip() == "":
            return None
        return s
    except ValueError as err:
        raise ConfigError(f"invalid value for option '{f.name}' ({value!r}): {err}") from None


def _fields_by_name() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(Settings)}


def env_names(f: dataclasses.Field) -> list[str]:
    return [ENV_PREFIX + f.name.upper(), *f.metadata.get("aliases", ())]


def values_from_yaml(path: str | os.PathLike) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    known = _fields_by_name()
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ConfigError(f"unknown option '{key}' in config file {path}")
        out[name] = _coerce(known[name], value)
    return out


def values_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for f in fields(Settings):
        # Aliases first so the canonical WYO_AMANUENSIS_ name wins when both are set.
        for env in reversed(env_names(f)):
            if env in environ:
                out[f.name] = _coerce(f, environ[env])
    return out


def build_parser(prog: str = "wyoming_amanuensis") -> argparse.ArgumentParser:
    """Flags for every Settings field. An option not given is absent from the namespace
    (``argparse.SUPPRESS``), so we can tell 'not given', and ``--help`` shows each
    option's real default (from the help text) rather than argparse's placeholder."""
    parser = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help=f"YAML file of option: value pairs (lowest precedence after defaults; "
                                         f"env: {ENV_PREFIX}CONFIG)")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        kind = _field_kind(f)
        default = f.default
        envs = ", ".join(env_names(f))
        help_text = f"{f.metadata['help']} (default: {default!r}; env: {envs})"
        help_text = help_text.replace("%", "%%")
        if kind == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        elif f.name == "zeroconf":
            parser.add_argument(flag, dest=f.name, nargs="?", const=socket.gethostname(), help=help_text)
        elif f.name == "vad_endpointing":
            parser.add_argument(flag, dest=f.name, nargs="?", const="0", metavar="SECONDS", help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, metavar=f.name.upper(),
                                choices=f.metadata["choices"] or None, help=help_text)
    return parser


def load_settings(argv_namespace: Optional[argparse.Namespace] = None, environ: Optional[Mapping[str, str]] = None,
                  config_file: Optional[str] = None) -> Settings:
    """defaults <- YAML file <- environment <- CLI flags, then validate."""
    environ = os.environ if environ is None else environ
    known = _fields_by_name()
    values: dict[str, Any] = {}
    config_file = config_file or (getattr(argv_namespace, "config", None) if argv_namespace else None) \
        or environ.get(ENV_PREFIX + "CONFIG")
    if config_file:
        values.update(values_from_yaml(config_file))
    values.update(values_from_env(environ))
    if argv_namespace is not None:
        for name, f in known.items():
            v = getattr(argv_namespace, name, None)
            if v is not None:
                values[name] = _coerce(f, v)
    return Settings(**values).validate()


def settings_from(**overrides: Any) -> Settings:
    """Defaults plus overrides, validated: for tests and library use (no env, no CLI)."""
    return dataclasses.replace(Settings(), **overrides).validate()


def options_markdown() -> str:
    """The options table in the README (kept in sync by a test)."""
    rows = ["| option (CLI flag) | environment | default | meaning |", "|---|---|---|---|"]
    for f in fields(Settings):
        default = f.default
        if f.name == "instance":
            default = "host name"
        shown = "" if default in (None, ()) else str(default).lower() if isinstance(default, bool) else str(default)
        envs = ", ".join(f"`{e}`" for e in env_names(f))
        rows.append(f"| `--{f.name.replace('_', '-')}` | {envs} | {('`' + shown + '`') if shown else '(empty)'} | {f.metadata['help']} |")
    return "\n".join(rows)
