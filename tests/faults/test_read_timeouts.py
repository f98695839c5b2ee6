"""Reading an image over the network has a bound (``KEDRO_TORCH_READ_TIMEOUT``): a host
that takes the connection and never answers fails the read within it, naming the URL,
where fsspec would wait for aiohttp's five minutes, twice."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from kedro_torch.pytorch import images
from kedro_torch.pytorch.config import ParameterError
from kedro_torch.pytorch.images import READ_TIMEOUT_VARIABLE, ReadTimedOut
from tests.faults.hanging import files_over_http, silent_host


@pytest.fixture(autouse=True)
def no_silent_hosts(monkeypatch):
    """Each test starts with no host remembered as silent."""
    monkeypatch.setattr(images, "_silent_hosts", {})


@pytest.fixture
def png_server():
    """A local HTTP server of one 8x8 grey PNG at /digit.png; 404 elsewhere."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(buffer, format="PNG")
    with files_over_http({"/digit.png": buffer.getvalue()}) as url:
        yield url


def test_a_host_that_never_answers_fails_the_read_within_the_bound(monkeypatch):
    monkeypatch.setenv(READ_TIMEOUT_VARIABLE, "1.5")
    with silent_host() as host:
        url = f"{host}/digits/3/a.png"
        started = time.monotonic()
        with pytest.raises(ReadTimedOut) as timed_out:
            images.read_bytes(url)
        assert time.monotonic() - started < 1.5 + 2
    assert str(timed_out.value) == (f"{host} did not send {url} within 1.5 s "
                                    f"({READ_TIMEOUT_VARIABLE})")


def test_the_other_files_of_a_silent_host_are_not_waited_on(monkeypatch):
    monkeypatch.setenv(READ_TIMEOUT_VARIABLE, "1")
    with silent_host() as host:
        first = images.check_file(f"{host}/a.png", size=8, channels=1, keep_pixels=False)
        started = time.monotonic()
        second = images.check_file(f"{host}/b.png", size=8, channels=1, keep_pixels=False)
        assert time.monotonic() - started < 0.5
    assert first.reason == f"cannot read: {host} did not send {host}/a.png within 1 s " \
                           f"({READ_TIMEOUT_VARIABLE})"
    assert second.reason == f"cannot read: {host}/b.png: not asked, {host} did not send " \
                            f"{host}/a.png within 1 s ({READ_TIMEOUT_VARIABLE})"
    assert not first.missing and not second.missing


def test_files_that_answer_are_read_and_a_404_is_a_missing_file(png_server):
    check = images.check_file(f"{png_server}/digit.png", size=8, channels=1, keep_pixels=True)
    assert check.reason is None
    assert (check.pixels == 128).all()
    assert images.check_file(f"{png_server}/gone.png", 8, 1, False).missing


def test_a_refused_connection_is_a_read_error_naming_the_address_not_a_missing_file():
    with silent_host() as host:  # its port, free again once it is closed
        pass
    check = images.check_file(f"{host}/a.png", size=8, channels=1, keep_pixels=False)
    assert not check.missing
    assert check.reason.startswith("cannot read: Cannot connect to host 127.0.0.1:")


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf", "nan"])
def test_a_bound_that_is_not_a_positive_number_is_refused(monkeypatch, value):
    monkeypatch.setenv(READ_TIMEOUT_VARIABLE, value)
    with silent_host() as host, pytest.raises(ParameterError, match=READ_TIMEOUT_VARIABLE):
        images.read_bytes(f"{host}/a.png")


def test_the_default_bound(monkeypatch):
    monkeypatch.delenv(READ_TIMEOUT_VARIABLE, raising=False)
    assert images.read_timeout() == 60
