"""The server answers describe before the engine has loaded: the modules it imports to open its
port (app, server, connection, lifetime, describe) import neither torch nor scipy nor the
tokenizer; the engine imports what it needs in the background load
(pipeline.import_engine_modules), and on the CPU that never includes torch."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "scipy", "tokenizers", "sympy")


def test_serving_modules_do_not_import_torch():
    code = ("import sys\n"
            "import wyoming_amanuensis.app, wyoming_amanuensis.server, wyoming_amanuensis.lifetime\n"
            "import wyoming_amanuensis.__main__\n"
            "from wyoming_amanuensis.config import settings_from\n"
            "from wyoming_amanuensis.lifetime import EngineHost\n"
            "from wyoming_amanuensis.info import build_info\n"
            "settings = settings_from(model='tiny.en')\n"
            "host = EngineHost(settings)\n"
            "assert host.model_languages() == {'tiny.en': ['en']}, host.model_languages()\n"
            "build_info(host, settings)\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"imported before the port opens: {out.stdout.strip()}"


def _run(code: str, timeout: int = 300) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_cpu_engine_never_imports_torch(tmp_path):
    """The CPU runtime is ONNX Runtime: loading and transcribing import no torch; once its graphs
    are built (the first start), not even onnx, which only writes them."""
    code = ("import sys\n"
            "import numpy as np\n"
            "from wyoming_amanuensis.config import settings_from\n"
            "from wyoming_amanuensis.pipeline import Engine\n"
            f"engine = Engine.load(settings_from(model='tiny.en', encoder_backend='cpu', threads=1, cache_dir={str(tmp_path)!r}))\n"
            "t = np.arange(16000, dtype=np.float32) / 16000\n"
            "engine.transcribe(0.3 * np.sin(2 * np.pi * 440 * t), 16000)\n"
            "print(sorted(m for m in ('torch', 'onnx') if m in sys.modules))\n")
    assert _run(code) == "['onnx']"  # the first start writes the graphs
    assert _run(code) == "[]"


def test_torch_runtime_imports_torch():
    code = ("import sys\n"
            "from wyoming_amanuensis.config import settings_from\n"
            "from wyoming_amanuensis.pipeline import Engine\n"
            "Engine.load(settings_from(model='tiny.en', encoder_backend='cpu', cpu_runtime='torch', threads=1,"
            " cache_dir='none'))\n"
            "print('torch' in sys.modules)\n")
    assert _run(code) == "True"
