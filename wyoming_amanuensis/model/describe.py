"""What a model is called and which languages it speaks, without loading its weights.

The server answers ``describe`` from this while the weights load (or after
they were unloaded when idle). It reads the same two files the full load
does, config.json's ``lang_ids`` and tokenizer.json's special tokens, and
applies ``WhisperTokenizer.from_files``'s rules to them.
"""

from __future__ import annotations

import json

from .ct2 import ModelFileError
from .loader import ModelNotFoundError, locate

MULTILINGUAL_EOT = 50257


def model_languages(name_or_path: str) -> tuple[str, list[str]]:
    """(the model's name as loading it would call it, its language codes)."""
    name, directory, _ = locate(name_or_path)
    tok_path, config_path = directory / "tokenizer.json", directory / "config.json"
    if not tok_path.is_file():
        raise ModelNotFoundError(f"{directory}: tokenizer.json is missing")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        spec = json.loads(tok_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{directory}: cannot read the model's config or tokenizer: {err}") from None
    ids: dict[int, str] = {}
    vocab = (spec.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):
        ids.update({i: t for t, i in vocab.items() if isinstance(i, int)})
    for added in spec.get("added_tokens") or []:
        if isinstance(added, dict) and isinstance(added.get("id"), int):
            ids[added["id"]] = str(added.get("content", ""))
    eot = next((i for i, t in ids.items() if t == "<|endoftext|>"), None)
    languages = []
    if eot == MULTILINGUAL_EOT:
        for i in config.get("lang_ids") or []:
            text = ids.get(i, "")
            if text.startswith("<|") and text.endswith("|>"):
                languages.append(text[2:-2])
    return name, languages or ["en"]
