"""Imports point one way, checked by import-linter with the contracts in pyproject.toml:
gateway -> channels, llm, speech -> models; speech imports nothing of ours; inside gateway
cli -> daemon -> sessions -> services -> asterisk, media, modelhub -> config, tasks; no cycles.

The contracts are also shown to fail: each wrong-way import below, added to a copy of the source,
must break them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "speech", "llm", "channels", "models")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                               "sys.exit(lint_imports(no_cache=True, no_logo=True))"],
        cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=120)


def test_the_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layering")
    shutil.copy(ROOT / "pyproject.toml", root)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


# (module that gets the import, the import, the contract it breaks)
WRONG = [
    ("gateway/media/pacer.py", "from gateway.sessions import call", "gateway's rooms"),
    ("gateway/asterisk/transfer.py", "from gateway.media import audiosocket", "gateway's rooms"),
    ("gateway/config.py", "import gateway.services", "gateway's rooms"),
    ("gateway/sessions/call.py", "from gateway.daemon import app", "gateway's rooms"),
    ("speech/stt.py", "from models import records", "speech imports nothing of ours"),
    ("llm/dialog.py", "import gateway.config", "gateway -> channels, llm, speech -> models"),
    ("channels/outbox.py", "from llm import site", "gateway -> channels, llm, speech -> models"),
    ("models/store.py", "import channels.base", "gateway -> channels, llm, speech -> models"),
    ("gateway/asterisk/ami.py", "from gateway.asterisk import transfer", "no import cycles"),
]


@pytest.mark.parametrize(("module", "statement", "contract"), WRONG, ids=[w[0] for w in WRONG])
def test_a_wrong_way_import_breaks_a_contract(copy: Path, module: str, statement: str, contract: str) -> None:
    path = copy / module
    original = path.read_text()
    path.write_text(original + f"\n{statement}  # wrong way, on purpose\n")
    try:
        result = lint_imports(copy)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout


def test_reading_the_config_loads_no_transport_or_model() -> None:
    """`switchboard questions list` and `doctor` read the config; they must not pay for a modem
    library, the email listener, the HTTP stack or the inference engines."""
    heavy = ["gsmmodem", "aiosmtpd", "aiosmtplib", "aiohttp", "panoramisk", "llama_cpp", "faster_whisper", "piper"]
    code = ("import sys; from gateway.cli.main import main; "
            "main(['-c', 'etc/switchboard.yaml', '--data-dir', sys.argv[1], 'questions', 'list']); "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, "/nonexistent-switchboard-data"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert "no database at" in result.stderr  # the command ran to its own check
    assert result.stdout.strip().splitlines()[-1] == "[]"
