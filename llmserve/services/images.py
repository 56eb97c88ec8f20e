"""Images in conversations: ``data:`` URLs decoded, ``http(s)://`` URLs fetched safely, or not
at all.

Every backend takes images as base64 data. A face turns a ``data:`` URL into its base64 part
(:func:`base64_of_data_url`); a remote URL stays a URL in the message until
:meth:`ImageFetcher.resolve` replaces it, before anything is sent upstream:

* ``ALLOW_IMAGE_URLS=false`` (the default) refuses it: 400 ``image_url_not_allowed``;
* otherwise the host's addresses must all be public (never private, loopback, link-local,
  multicast or reserved: a private server would otherwise let its clients reach the machines
  behind it), and the request goes to the address that was checked (a name that resolves
  differently a moment later changes nothing); redirects are followed by hand, each hop
  checked the same way, at most
  ``MAX_REDIRECTS``; the body may not exceed ``MAX_IMAGE_BYTES``; the whole fetch has a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin, urlsplit

import httpx

from llmserve import errors
from llmserve.domain import GenerationRequest, Message

MAX_REDIRECTS = 3
FETCH_TIMEOUT_S = 15.0

Resolver = Callable[[str, int], Awaitable[list[str]]]


def is_remote_url(image: str) -> bool:
    return image.startswith(("http://", "https://"))


def base64_of_data_url(url: str, max_bytes: int) -> str:
    """The base64 data of ``data:[<type>];base64,<data>`` (checked: standard base64, an image
    type, at most ``max_bytes`` decoded)."""
    header, comma, data = url.partition(",")
    if not comma or not header.startswith("data:") or not header.endswith(";base64"):
        raise errors.InvalidRequestError("an image data URL must be data:image/...;base64,...")
    media_type = header[5:-7]
    if media_type and not media_type.startswith("image/"):
        raise errors.InvalidRequestError(f"'{media_type}' is not an image type")
    return checked_base64(data, max_bytes)


def checked_base64(data: str, max_bytes: int) -> str:
    """``data`` if it is standard base64 of at most ``max_bytes`` bytes."""
    if len(data) * 3 // 4 > max_bytes + 3:
        raise errors.InvalidRequestError(f"an image exceeds {max_bytes} bytes (MAX_IMAGE_BYTES)")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidRequestError("an image is not valid base64 data") from None
    return data


def public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def resolve_host(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class ImageFetcher:
    """Replaces remote image URLs in a request by their base64 data (see the module doc).

    ``resolve_host`` and ``allowed`` are injectable so that tests can serve images from this
    machine; the defaults accept public addresses only.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        allow_urls: bool,
        max_bytes: int,
        resolve_host: Resolver = resolve_host,
        allowed: Callable[[str], bool] = public_address,
        timeout_s: float = FETCH_TIMEOUT_S,
    ) -> None:
        self._client = client
        self._allow_urls = allow_urls
        self.max_bytes = max_bytes
        self._resolve_host = resolve_host
        self._allowed = allowed
        self._timeout_s = timeout_s

    async def resolve(self, request: GenerationRequest) -> GenerationRequest:
        """``request`` with every remote image fetched (the same object when there is none)."""
        if not any(is_remote_url(i) for m in request.messages for i in m.images):
            return request
        if not self._allow_urls:
            raise errors.ImageUrlNotAllowedError(
                "image URLs are not allowed on this server (ALLOW_IMAGE_URLS=false): "
                "send the image as a base64 data URL"
            )
        messages: list[Message] = []
        for message in request.messages:
            images = [await self.fetch(i) if is_remote_url(i) else i for i in message.images]
            messages.append(dataclasses.replace(message, images=tuple(images)))
        return dataclasses.replace(request, messages=tuple(messages))

    async def fetch(self, url: str) -> str:
        """The image at ``url`` as base64."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return base64.b64encode(await self._fetch(url)).decode()
        except TimeoutError:
            raise errors.InvalidRequestError(
                f"the image at {url} did not arrive within {self._timeout_s:.0f} s"
            ) from None
        except httpx.HTTPError as exc:
            raise errors.InvalidRequestError(
                f"the image at {url} could not be fetched: {exc}"
            ) from None

    async def _fetch(self, url: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            request = self._pinned_request(url, await self._check(url))
            response = await self._client.send(request, stream=True, follow_redirects=False)
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise errors.InvalidRequestError(
                        f"the image at {url} answered HTTP {response.status_code}"
                    )
                return await self._body(response, url)
            finally:
                await response.aclose()
        raise errors.InvalidRequestError(f"the image at {url} redirects too often")

    def _pinned_request(self, url: str, address: str) -> httpx.Request:
        """A GET of ``url`` sent to the ``address`` that was checked, not to whatever the name
        resolves to a moment later (DNS rebinding); the Host header and TLS name stay the
        URL's."""
        target = httpx.URL(url)
        host = target.host
        pinned = target.copy_with(host=address)
        headers = {"Host": target.netloc.decode("ascii")}
        extensions = {"sni_hostname": host} if target.scheme == "https" else {}
        return self._client.build_request("GET", pinned, headers=headers, extensions=extensions)

    async def _check(self, url: str) -> str:
        """The address to fetch ``url`` from, once every address of its host is allowed."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise errors.ImageUrlNotAllowedError(f"'{url}' is not an http(s) URL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = await self._resolve_host(parts.hostname, port)
        except OSError:
            raise errors.InvalidRequestError(
                f"the image host {parts.hostname} is unknown"
            ) from None
        if not addresses or not all(self._allowed(address) for address in addresses):
            raise errors.ImageUrlNotAllowedError(
                f"the image URL {url} points to a private, loopback or link-local address"
            )
        return addresses[0]

    async def _body(self, response: httpx.Response, url: str) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise errors.InvalidRequestError(
                f"the image at {url} exceeds {self.max_bytes} bytes (MAX_IMAGE_BYTES)"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise errors.InvalidRequestError(
                    f"the image at {url} exceeds {self.max_bytes} bytes (MAX_IMAGE_BYTES)"
                )
            chunks.append(chunk)
        return b"".join(chunks)
