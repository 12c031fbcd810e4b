"""The clamd client against the real clamd (TCP and unix socket), and a fake for faults."""

from __future__ import annotations

import io
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from policy_milter.services.clamd import Clamd, VirusResult
from policy_milter.services.errors import DependencyError
from tests.support.scanners import (
    EICAR,
    EICAR_SIGNATURE,
    ClamdServer,
    FakeScanner,
    clean_message,
    eicar_attachment,
    eicar_inline,
    eicar_nested,
)

MiB = 1024 * 1024
FOUND_EICAR = (f"{EICAR_SIGNATURE}.UNOFFICIAL",)


@pytest.fixture(scope="module")
def clamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    with ClamdServer(tmp_path_factory.mktemp("clamd")) as server:
        yield server


@pytest.fixture(scope="module")
def small_stream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    """A clamd whose StreamMaxLength (1M) is below what the client allows itself."""
    with ClamdServer(tmp_path_factory.mktemp("clamd-small"), stream_max="1M") as server:
        yield server


@pytest.fixture(scope="module")
def alerting_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    """A clamd that says when it skips data over its limits (AlertExceedsMax)."""
    options = {"AlertExceedsMax": "yes", "MaxFileSize": "100K"}
    with ClamdServer(tmp_path_factory.mktemp("clamd-alert"), options=options) as server:
        yield server


@pytest.fixture(params=["tcp", "unix"])
def clamd(request: pytest.FixtureRequest, clamd_server: ClamdServer) -> Clamd:
    address = clamd_server.tcp_address if request.param == "tcp" else clamd_server.unix_address
    return Clamd(address, timeout=10)


class Recording(io.BufferedReader):
    """A message file that records the size of every read() the client asks for."""

    def __init__(self, path: Path) -> None:
        super().__init__(io.FileIO(path))
        self.sizes: list[int | None] = []

    def read(self, size: int | None = -1) -> bytes:
        self.sizes.append(size)
        return super().read(size)


def scan(client: Clamd, data: bytes) -> VirusResult:
    return client.scan(io.BytesIO(data))


def padded(data: bytes, size: int) -> bytes:
    """``data`` with text lines appended up to exactly ``size`` bytes."""
    lines = (b"x" * 78 + b"\r\n") * (size // 80 + 1)
    return (data + lines)[:size]


def failure(client: Clamd, message: bytes | BinaryIO) -> str:
    with pytest.raises(DependencyError) as caught:
        client.scan(io.BytesIO(message) if isinstance(message, bytes) else message)
    assert (caught.value.service, caught.value.entry) == ("clamd", "scanner_tempfail")
    return str(caught.value)


# --- the real clamd -------------------------------------------------------------------------

def test_clean_message(clamd: Clamd) -> None:
    result = scan(clamd, clean_message())
    assert result == VirusResult()
    assert not result.infected and not result.not_checked


@pytest.mark.parametrize("make", [eicar_inline, eicar_attachment, eicar_nested])
def test_eicar_is_found(clamd: Clamd, make: Callable[[], bytes]) -> None:
    data = make()
    # Attached, the test string is only there in base64: clamd must decode the MIME parts.
    assert (EICAR in data) == (make is eicar_inline)
    result = scan(clamd, data)
    assert result.names == FOUND_EICAR and "Eicar" in result.names[0]
    assert result.infected and not result.not_checked


def test_scan_starts_at_the_current_position(clamd: Clamd) -> None:
    infected = eicar_inline()
    message = io.BytesIO(infected + clean_message())
    message.seek(len(infected))
    assert clamd.scan(message) == VirusResult()


def test_ping(clamd: Clamd) -> None:
    assert clamd.ping()


def test_over_stream_max_is_refused_before_sending(clamd_server: ClamdServer,
                                                  tmp_path: Path) -> None:
    path = tmp_path / "message.eml"
    path.write_bytes(padded(eicar_inline(), 2000))
    client = Clamd(clamd_server.tcp_address, stream_max=1999)
    with Recording(path) as message:
        result = client.scan(message)
        assert message.sizes == []  # not one byte read, so none sent
    assert result.not_checked == "message of 2000 bytes is over clamd_max_size (1999)"
    assert not result.infected
    with open(path, "rb") as message:
        assert Clamd(clamd_server.tcp_address, stream_max=2000).scan(message).infected


def test_streammaxlength_is_inclusive(small_stream_server: ClamdServer) -> None:
    """A message of exactly StreamMaxLength bytes is scanned: stream_max may equal it."""
    client = Clamd(small_stream_server.tcp_address, stream_max=MiB)
    assert scan(client, padded(clean_message(), MiB)) == VirusResult()


def test_over_clamd_own_limit_is_not_checked(small_stream_server: ClamdServer) -> None:
    """Configured above clamd's StreamMaxLength, clamd refuses the stream: not 'clean', and
    not a failure that a retry could mend either."""
    client = Clamd(small_stream_server.tcp_address, stream_max=25 * MiB)
    result = scan(client, padded(clean_message(), 3 * MiB))
    assert "StreamMaxLength" in result.not_checked and not result.infected


def test_data_over_clamd_limits_is_reported_not_scanned(alerting_server: ClamdServer) -> None:
    """Over MaxFileSize clamd skips the data: EICAR inside is not found, only the notice."""
    result = scan(Clamd(alerting_server.tcp_address), padded(eicar_inline(), 200 * 1024))
    assert result.names == ("Heuristics.Limits.Exceeded.MaxFileSize",)
    assert "Heuristics.Limits.Exceeded.MaxFileSize" in result.not_checked
    assert not result.infected


def test_a_25_mb_message_is_streamed_in_chunks(clamd_server: ClamdServer, tmp_path: Path) -> None:
    path = tmp_path / "big.eml"
    size = 25 * MiB - 4096
    with open(path, "wb") as out:
        out.write(clean_message())
        line = b"y" * 78 + b"\r\n"
        out.write(line * ((size - out.tell() - len(EICAR) - 2) // len(line)))
        out.write(EICAR + b"\r\n")  # at the very end: found only if every byte went through
    client = Clamd(clamd_server.unix_address, timeout=60)
    with Recording(path) as message:
        tracemalloc.start()
        try:
            result = client.scan(message)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        sizes = message.sizes
    assert result.names == FOUND_EICAR
    assert len(sizes) > 300 and all(s is not None and 0 < s <= client.chunk for s in sizes)
    assert peak < 1 * MiB


# --- faults ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, says", [
    ("refuse", "Connection refused while connecting"),
    ("garbage", "reply not understood: '?????HTTP/1.1 400 Bad Request?????[2J'"),
    ("error", "clamd answered \"Can't allocate memory ERROR\""),
    ("close", ""),  # a reset or an empty reply, depending on timing: either fails
])
def test_faults_fail(mode: str, says: str) -> None:
    with FakeScanner(mode) as fake:
        assert says in failure(Clamd(fake.address, timeout=5), clean_message())
        assert not Clamd(fake.address, timeout=5).ping()


def test_a_hanging_clamd_times_out() -> None:
    with FakeScanner("hang") as fake:
        client = Clamd(fake.address, timeout=0.5)
        started = time.monotonic()
        message = failure(client, clean_message())
        assert 0.5 <= time.monotonic() - started < 1.5
        assert message.endswith("timed out after 0.5 s while waiting for the reply")


def test_limit_notice_is_neither_clean_nor_infected() -> None:
    with FakeScanner("limits") as fake:
        result = scan(Clamd(fake.address), clean_message())
    assert result.names == ("Heuristics.Limits.Exceeded.MaxFileSize",)
    assert result.not_checked and not result.infected and result != VirusResult()


@pytest.mark.parametrize("reply, names", [
    (b"stream: Win.Test.A FOUND\0stream: Heuristics.Limits.Exceeded.MaxScanSize FOUND\0",
     ("Win.Test.A", "Heuristics.Limits.Exceeded.MaxScanSize")),
    (b"stream: Bad\x1b[31mName\xff FOUND\0", ("Bad?[31mName?",)),
    (b"stream: " + b"N" * 500 + b" FOUND\0", ("N" * 97 + "...",)),
])
def test_found_names_are_all_kept_and_printable(reply: bytes, names: tuple[str, ...]) -> None:
    with FakeScanner("answer", reply) as fake:
        result = scan(Clamd(fake.address), clean_message())
    assert result.names == names and result.infected


@pytest.mark.parametrize("reply", [
    b"stream: OK",  # cut before its NUL
    b"stream:  FOUND\0",
    b"stream: OK\0stream: Can't allocate memory ERROR\0",
    b"PONG\0",
    b"\0",
])
def test_replies_not_understood_fail(reply: bytes) -> None:
    with FakeScanner("answer", reply) as fake:
        failure(Clamd(fake.address), clean_message())


@pytest.mark.parametrize("address", ["127.0.0.1:3310", "tcp:127.0.0.1", "tcp::3310",
                                     "tcp:host:99999", "unix:", "inet:3310@127.0.0.1"])
def test_bad_addresses_are_refused_when_configured(address: str) -> None:
    with pytest.raises(ValueError):
        Clamd(address)
