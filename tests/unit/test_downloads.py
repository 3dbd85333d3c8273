"""Downloads and `switchboard models` against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import socket
import threading

import pytest
from aiohttp import web

from gateway.modelhub import catalog as model_catalog
from gateway.modelhub.downloads import DownloadError, download, part_path
from gateway.modelhub.catalog import CATALOGUE, CatalogEntry, CatalogFile
from gateway.cli.common import MIRROR_ENV
from gateway.cli.main import main as switchboard
from gateway.cli.models import rebase_url

DATA = random.Random(7).randbytes(3 * 1024 * 1024 + 123)
SHA = hashlib.sha256(DATA).hexdigest()
FAST = {"retry_delay_s": 0.01, "timeout_s": 5}


class LoopbackServer:
    """Serves `files` by path with Range support; `behaviour[path]` bends the rules for one path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.behaviour: dict[str, set[str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def requests_for(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.requests if p == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path, rng = request.path, request.headers.get("Range")
        self.requests.append((path, rng))
        behaviour = self.behaviour.get(path, set())
        if path not in self.files:
            return web.Response(status=404, text="not here")
        if "stall" in behaviour:
            await asyncio.sleep(3)  # cancelled when the client gives up
        data, status, headers = self.files[path], 200, {}
        start = 0
        if rng and "ignore_range" not in behaviour:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status, headers = 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        body = data[start:]
        resp = web.StreamResponse(status=status, headers={**headers, "Content-Length": str(len(body))})
        await resp.prepare(request)
        if "drop_first" in behaviour and len(self.requests_for(path)) == 1:
            await resp.write(body[: len(body) // 3])
            request.transport.close()  # mid-body: the client sees a short read
            return resp
        await resp.write(body)
        await resp.write_eof()
        return resp

    def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        self.thread.start()
        self._run(self.runner.setup())
        self._run(web.TCPSite(self.runner, "127.0.0.1", 0).start())
        self.port = self.runner.addresses[0][1]

    def stop(self) -> None:
        self._run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)


@pytest.fixture
def server():
    srv = LoopbackServer()
    srv.files["/blob.bin"] = DATA
    srv.start()
    yield srv
    srv.stop()


async def test_full_download_verifies_and_renames(server, tmp_path):
    dest = tmp_path / "m" / "blob.bin"
    seen: list[tuple[int, int | None]] = []

    got = await download(server.url("/blob.bin"), dest, sha256=SHA, size=len(DATA),
                         progress=lambda done, total: seen.append((done, total)), **FAST)

    assert got == dest and dest.read_bytes() == DATA
    assert not part_path(dest).exists()
    assert server.requests_for("/blob.bin") == [None]
    assert seen[-1] == (len(DATA), len(DATA)) and len(seen) > 1


async def test_existing_good_file_is_kept_without_a_request(server, tmp_path):
    dest = tmp_path / "blob.bin"
    dest.write_bytes(DATA)
    await download(server.url("/blob.bin"), dest, sha256=SHA, size=len(DATA), **FAST)
    assert server.requests == []


async def test_resumes_after_connection_drops_mid_body(server, tmp_path):
    server.behaviour["/blob.bin"] = {"drop_first"}
    dest = tmp_path / "blob.bin"

    await download(server.url("/blob.bin"), dest, sha256=SHA, size=len(DATA), **FAST)

    first, second = server.requests_for("/blob.bin")
    assert first is None
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", second).group(1))
    assert 0 < resumed_at < len(DATA)
    assert dest.read_bytes() == DATA


async def test_resumes_part_left_by_an_earlier_run(server, tmp_path):
    dest = tmp_path / "blob.bin"
    part_path(dest).write_bytes(DATA[:1_000_000])

    await download(server.url("/blob.bin"), dest, sha256=SHA, size=len(DATA), **FAST)

    assert server.requests_for("/blob.bin") == ["bytes=1000000-"]
    assert dest.read_bytes() == DATA


async def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.behaviour["/blob.bin"] = {"ignore_range"}
    dest = tmp_path / "blob.bin"
    part_path(dest).write_bytes(b"\0" * 5000)  # wrong bytes: only a restart from zero can end well

    await download(server.url("/blob.bin"), dest, sha256=SHA, size=len(DATA), **FAST)

    assert server.requests_for("/blob.bin") == ["bytes=5000-"]
    assert dest.read_bytes() == DATA


async def test_range_not_satisfiable_means_part_is_complete(server, tmp_path):
    dest = tmp_path / "blob.bin"
    part_path(dest).write_bytes(DATA)

    await download(server.url("/blob.bin"), dest, sha256=SHA, size=len(DATA), **FAST)

    assert server.requests_for("/blob.bin") == [f"bytes={len(DATA)}-"]
    assert dest.read_bytes() == DATA and not part_path(dest).exists()


async def test_wrong_checksum_raises_and_leaves_no_file(server, tmp_path):
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError, match="sha256 mismatch") as err:
        await download(server.url("/blob.bin"), dest, sha256="0" * 64, size=len(DATA), **FAST)
    assert err.value.url == server.url("/blob.bin") and err.value.dest == dest
    assert not dest.exists() and not part_path(dest).exists()


async def test_http_404_names_url_and_dest(server, tmp_path):
    dest = tmp_path / "nothing.bin"
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        await download(server.url("/nothing.bin"), dest, sha256=SHA, **FAST)
    assert server.url("/nothing.bin") in str(err.value) and str(dest) in str(err.value)
    assert not dest.exists() and not part_path(dest).exists()


async def test_connection_refused(tmp_path):
    with socket.socket() as s:  # a port nobody listens on once the socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/blob.bin"
    with pytest.raises(DownloadError, match=f"cannot connect to 127.0.0.1:{port}") as err:
        await download(url, tmp_path / "blob.bin", sha256=SHA, **FAST)
    assert url in str(err.value)


async def test_stalled_server_times_out(server, tmp_path):
    server.behaviour["/blob.bin"] = {"stall"}
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError, match=r"no response within 0\.3s") as err:
        await download(server.url("/blob.bin"), dest, sha256=SHA, timeout_s=0.3, retries=0)
    assert str(dest) in str(err.value)


def test_rebase_url_keeps_path_under_mirror_prefix():
    url = "https://huggingface.co/Qwen/X-GGUF/resolve/abc/x.gguf"
    assert rebase_url(url, "http://127.0.0.1:8080/mirror/") == "http://127.0.0.1:8080/mirror/Qwen/X-GGUF/resolve/abc/x.gguf"
    with pytest.raises(ValueError):
        rebase_url(url, "127.0.0.1:8080")


def test_catalogue_entries_are_complete_and_pinned():
    kinds = {e.kind for e in CATALOGUE.values() if e.bundled}
    assert kinds == {"llm", "stt", "tts"}
    key = {"llm": "path:", "stt": "path:", "tts": "voice:"}
    for entry in CATALOGUE.values():
        if entry.bundled:
            assert not entry.files and entry.size > 0
            continue
        assert entry.files and key[entry.kind] in entry.config_hint and "{dir}" in entry.config_hint
        for f in entry.files:
            assert re.fullmatch(r"[0-9a-f]{64}", f.sha256), f
            assert f.size > 0 and f.url.endswith("/" + f.filename)
            assert re.match(r"https://huggingface\.co/[^/]+/[^/]+/resolve/(?!main/)", f.url), f.url


# --- `switchboard models` through the argparse entry point ------------------------------------

SMALL = b"small config file\n"
TEST_ENTRY = CatalogEntry(
    name="test-model", kind="llm", description="test", licence="test",
    files=(
        CatalogFile("https://huggingface.co/acme/test/resolve/rev1/blob.bin", "blob.bin", len(DATA), SHA),
        CatalogFile("https://huggingface.co/acme/test/resolve/rev1/small.json", "small.json", len(SMALL),
                    hashlib.sha256(SMALL).hexdigest()),
    ),
    config_hint="models:\n  llm:\n    path: {dir}/blob.bin\n",
)


@pytest.fixture
def mirror(server, monkeypatch):
    monkeypatch.setitem(model_catalog.CATALOGUE, TEST_ENTRY.name, TEST_ENTRY)
    server.files = {"/acme/test/resolve/rev1/blob.bin": DATA, "/acme/test/resolve/rev1/small.json": SMALL}
    return server


def run_cli(*argv: str) -> int:
    return switchboard(["--config", "etc/switchboard.yaml", *argv])


def test_models_pull_end_to_end(mirror, tmp_path, capsys):
    rc = run_cli("--data-dir", str(tmp_path), "models", "pull", "test-model", "--url-base", mirror.base)

    out = capsys.readouterr().out
    model_dir = (tmp_path / "models" / "test-model").resolve()
    assert rc == 0
    assert (model_dir / "blob.bin").read_bytes() == DATA and (model_dir / "small.json").read_bytes() == SMALL
    assert f"path: {model_dir}/blob.bin" in out
    assert [p for p, _ in mirror.requests] == list(mirror.files)

    assert run_cli("--data-dir", str(tmp_path), "models", "list") == 0
    listed = capsys.readouterr().out
    assert re.search(r"^test-model\s+llm\s+3 MB\s+installed\s", listed, re.M)
    assert re.search(r"^gemma-3-270m\s+llm\s+253 MB\s+bundled\s", listed, re.M)


def test_models_pull_reports_download_failure(mirror, tmp_path, capsys):
    mirror.files.pop("/acme/test/resolve/rev1/small.json")
    rc = run_cli("--data-dir", str(tmp_path), "models", "pull", "test-model", "--url-base", mirror.base)
    assert rc == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_models_pull_bundled_and_unknown(tmp_path, capsys):
    assert run_cli("--data-dir", str(tmp_path), "models", "pull", "whisper-tiny.en") == 0
    assert "installs it with switchboard" in capsys.readouterr().out
    assert not (tmp_path / "models").exists()
    assert run_cli("--data-dir", str(tmp_path), "models", "pull", "no-such-model") == 2
    assert "no model 'no-such-model'" in capsys.readouterr().err


def test_models_verify_detects_corrupted_and_missing_files(mirror, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, mirror.base)
    assert run_cli("--data-dir", str(tmp_path), "models", "pull", "test-model") == 0
    blob = tmp_path / "models" / "test-model" / "blob.bin"
    capsys.readouterr()

    assert run_cli("--data-dir", str(tmp_path), "models", "verify") == 0
    out = capsys.readouterr().out
    assert re.search(rf"^OK\s+{re.escape(str(blob))}$", out, re.M)
    assert "not assembled yet" in out  # the bundled GGUF is not an error before first start

    with blob.open("r+b") as f:
        f.seek(123_456)
        f.write(bytes([DATA[123_456] ^ 1]))
    (blob.parent / "small.json").unlink()

    assert run_cli("--data-dir", str(tmp_path), "models", "verify") == 1
    out = capsys.readouterr().out
    assert re.search(rf"^CORRUPT\s+{re.escape(str(blob))}\s+\(sha256 ", out, re.M)
    assert re.search(r"^MISSING\s+\S+/small\.json$", out, re.M)
    assert "2 problem(s)" in out
