"""Images: data URLs decoded and checked; remote URLs refused unless allowed, then fetched only
from public addresses (every redirect hop checked), within MAX_IMAGE_BYTES."""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest

from llmserve import errors
from llmserve.domain import GenerationRequest, Message
from llmserve.services.images import (
    ImageFetcher,
    base64_of_data_url,
    checked_base64,
    public_address,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


class _Images(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/cat.png":
            self._send(200, PNG)
        elif self.path == "/big.png":
            self._send(200, PNG * 100)
        elif self.path.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/to") :])
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path == "/private":
            self.send_response(302)
            self.send_header("Location", "http://10.1.2.3/cat.png")
            self.end_headers()
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://images.test:{server.server_address[1]}"
    server.shutdown()


async def _to_this_machine(host: str, port: int) -> list[str]:
    """A resolver for the tests: ``images.test`` is this machine, ``10.*.test`` a private one."""
    return ["127.0.0.1"] if host == "images.test" else [host]


def _loopback_allowed(address: str) -> bool:
    return address == "127.0.0.1" or public_address(address)


def _request(url: str) -> GenerationRequest:
    return GenerationRequest((Message("user", "what is this?", images=(url,)),))


@pytest.mark.anyio
async def test_a_remote_image_is_fetched_as_base64(image_server: str) -> None:
    async with httpx.AsyncClient() as client:
        fetcher = ImageFetcher(
            client,
            allow_urls=True,
            max_bytes=1000,
            resolve_host=_to_this_machine,
            allowed=_loopback_allowed,
        )
        resolved = await fetcher.resolve(_request(f"{image_server}/cat.png"))
        assert resolved.messages[0].images == (base64.b64encode(PNG).decode(),)
        via_redirect = await fetcher.resolve(_request(f"{image_server}/to/cat.png"))
        assert via_redirect.messages[0].images == resolved.messages[0].images
        for path, problem in (
            ("/big.png", "MAX_IMAGE_BYTES"),
            ("/missing.png", "HTTP 404"),
            ("/loop", "redirects too often"),
        ):
            with pytest.raises(errors.InvalidRequestError, match=problem):
                await fetcher.resolve(_request(f"{image_server}{path}"))
        with pytest.raises(errors.ImageUrlNotAllowedError):
            await fetcher.resolve(_request(f"{image_server}/private"))  # a redirect inward


@pytest.mark.anyio
async def test_private_loopback_and_link_local_addresses_are_never_fetched(
    image_server: str,
) -> None:
    async with httpx.AsyncClient() as client:
        fetcher = ImageFetcher(client, allow_urls=True, max_bytes=1000)
        for url in (
            "http://127.0.0.1/cat.png",
            "http://localhost/cat.png",
            "http://10.0.0.8/cat.png",
            "http://192.168.1.1/cat.png",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/cat.png",
            "http://[::ffff:127.0.0.1]/cat.png",
        ):
            with pytest.raises(errors.ImageUrlNotAllowedError):
                await fetcher.resolve(_request(url))


@pytest.mark.anyio
async def test_remote_images_are_refused_unless_allowed() -> None:
    async with httpx.AsyncClient() as client:
        fetcher = ImageFetcher(client, allow_urls=False, max_bytes=1000)
        with pytest.raises(errors.ImageUrlNotAllowedError, match="ALLOW_IMAGE_URLS"):
            await fetcher.resolve(_request("https://example.com/cat.png"))
        plain = GenerationRequest((Message("user", "hi"),))
        assert await fetcher.resolve(plain) is plain


def test_data_urls_are_decoded_and_checked() -> None:
    data = base64.b64encode(PNG).decode()
    assert base64_of_data_url(f"data:image/png;base64,{data}", 1000) == data
    assert base64_of_data_url(f"data:;base64,{data}", 1000) == data
    for bad in (f"data:text/plain;base64,{data}", "data:image/png,raw", "data:image/png;base64,%%"):
        with pytest.raises(errors.InvalidRequestError):
            base64_of_data_url(bad, 1000)
    with pytest.raises(errors.InvalidRequestError, match="MAX_IMAGE_BYTES"):
        checked_base64(data, 10)
