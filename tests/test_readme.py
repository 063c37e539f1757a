"""The README's claims that code can check: the options table and the two commands."""

from __future__ import annotations

import re
from pathlib import Path

from wyoming_amanuensis.config import options_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_options_table_is_current():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- options:begin[^>]*-->\n(.*?)<!-- options:end -->", readme, re.S)
    assert block, "README lost its options markers"
    assert block.group(1).strip() == options_markdown().strip(), \
        "README options table is stale: regenerate with python -c 'from wyoming_amanuensis.config import options_markdown; print(options_markdown())'"


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "./script/setup && ./script/run --uri tcp://0.0.0.0:10300" in readme
    assert "\n./script/test\n" in readme
    assert "./script/setup" in ci and "./script/test" in ci
