"""The spamd client against the real spamd, and a fake for faults."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import pytest

from policy_milter.services.errors import DependencyError
from policy_milter.services.spamd import Spamd, SpamResult
from tests.support.scanners import FakeScanner, SpamdServer, clean_message, gtube_message


@pytest.fixture(scope="module")
def spamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpamdServer]:
    with SpamdServer(tmp_path_factory.mktemp("spamd")) as server:
        yield server


@pytest.fixture
def spamd(spamd_server: SpamdServer) -> Spamd:
    return Spamd(spamd_server.address, timeout=30)


def check(client: Spamd, data: bytes) -> SpamResult:
    return client.check(io.BytesIO(data), len(data))


def failure(client: Spamd, data: bytes, size: int | None = None) -> str:
    with pytest.raises(DependencyError) as caught:
        client.check(io.BytesIO(data), len(data) if size is None else size)
    assert (caught.value.service, caught.value.entry) == ("spamd", "scanner_tempfail")
    return str(caught.value)


# --- the real spamd -------------------------------------------------------------------------

def test_gtube_scores_1000(spamd: Spamd) -> None:
    result = check(spamd, gtube_message())
    assert result.score >= 1000 and result.threshold == 5.0
    assert "GTUBE" in result.symbols


def test_clean_message_scores_low(spamd: Spamd) -> None:
    result = check(spamd, clean_message())
    assert result.score < 5 and result.threshold == 5.0
    assert "GTUBE" not in result.symbols


def test_only_size_bytes_are_sent(spamd: Spamd) -> None:
    """spamd reads exactly Content-length bytes: what follows in the file is not scored."""
    clean = clean_message()
    result = spamd.check(io.BytesIO(clean + gtube_message()), len(clean))
    assert "GTUBE" not in result.symbols


def test_a_message_shorter_than_its_size_fails_at_once(spamd: Spamd) -> None:
    started = time.monotonic()
    says = failure(spamd, clean_message(), len(clean_message()) + 10)
    assert says.endswith(f"message ended 10 bytes short of its {len(clean_message()) + 10}")
    assert time.monotonic() - started < 1  # not left waiting for bytes that never come


def test_user_is_sent(spamd_server: SpamdServer) -> None:
    check(Spamd(spamd_server.address, user="scan-user-1"), clean_message())
    deadline = time.monotonic() + 5
    while "user=scan-user-1," not in spamd_server.log.read_text():
        assert time.monotonic() < deadline, "spamd never logged the user"
        time.sleep(0.05)


def test_ping(spamd: Spamd) -> None:
    assert spamd.ping()


# --- faults ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, says", [
    ("refuse", "Connection refused while connecting"),
    ("garbage", "reply not understood: '?????HTTP/1.1 400 Bad Request"),
    ("badcode", "spamd answered 'SPAMD/1.1 76 Bad header line: (Content-Length mismatch"),
    ("close", ""),  # a reset or an empty reply, depending on timing: either fails
])
def test_faults_fail(mode: str, says: str) -> None:
    with FakeScanner(mode) as fake:
        assert says in failure(Spamd(fake.address, timeout=5), clean_message())
        assert not Spamd(fake.address, timeout=5).ping()


def test_a_hanging_spamd_times_out() -> None:
    with FakeScanner("hang") as fake:
        started = time.monotonic()
        says = failure(Spamd(fake.address, timeout=0.5), clean_message())
        assert 0.5 <= time.monotonic() - started < 1.5
        assert says.endswith("timed out after 0.5 s while waiting for the reply")


def test_a_good_reply_is_parsed() -> None:
    reply = (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 15\r\nSpam: False ; -0.5 / 6.5\r\n\r\n"
             b"BAYES_00,\x1bEVIL\xff")
    with FakeScanner("answer", reply) as fake:
        result = check(Spamd(fake.address), clean_message())
    assert result == SpamResult(-0.5, 6.5, ("BAYES_00", "?EVIL?"))


@pytest.mark.parametrize("reply, says", [
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 5\r\n\r\nGTUBE", "no Spam header"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; lots / 5.0\r\n\r\nGTUBE", "no Spam header"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 40\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE",
     "reply cut short: 5 of 40 bytes"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1000.0 / 5.0\r\n", "reply ended inside its headers"),
    (b"SPAMD/1.1 0 EX_OK", "reply ended inside its headers"),
    (b"SPAMD/1.1 74 EX_CONFIG\r\n\r\n", "spamd answered 'SPAMD/1.1 74 EX_CONFIG'"),
    (b"HTTP/1.1 200 OK\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n", "reply not understood"),
])
def test_replies_not_understood_fail(reply: bytes, says: str) -> None:
    with FakeScanner("answer", reply) as fake:
        assert says in failure(Spamd(fake.address), clean_message())


@pytest.mark.parametrize("user", ["two words", "line\r\nUser: root", "caf\u00e9"])
def test_a_user_that_cannot_be_a_header_is_refused(user: str) -> None:
    with pytest.raises(ValueError):
        Spamd("tcp:127.0.0.1:783", user=user)
