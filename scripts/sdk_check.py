"""The official `openai` Python SDK against `imagegen emulator`: proves the SDK parses the emulator's answers.

Run by scripts/sdk-check.sh, which installs the SDK into the CI tools' virtualenv and starts the emulator:

    python scripts/sdk_check.py --base http://127.0.0.1:PORT --api-key KEY --azure-deployment NAME

Prints one line per check (PASS/FAIL) and ends with "N passed, M failed"; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import base64
import struct
import sys
import traceback
from typing import Callable

import openai
from openai import AzureOpenAI, OpenAI

PROMPT = "A lighthouse on a cliff at dusk, seen from the sea"


def image_size(data: bytes) -> tuple[str, int, int]:
    """The format and size a PNG, JPEG or WebP says it has (its header only)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        width, height = struct.unpack(">II", data[16:24])
        return "png", width, height
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                break
            marker = data[i + 1]
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return "jpeg", width, height
            i += 2 + length
        raise AssertionError("a JPEG without a start-of-frame segment")
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        chunk = data[12:16]
        if chunk == b"VP8L":
            (bits,) = struct.unpack("<I", data[21:25])
            return "webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":
            width = int.from_bytes(data[24:27], "little") + 1
            height = int.from_bytes(data[27:30], "little") + 1
            return "webp", width, height
        if chunk == b"VP8 ":
            width, height = struct.unpack("<HH", data[26:30])
            return "webp", width & 0x3FFF, height & 0x3FFF
        raise AssertionError(f"an unknown WebP chunk {chunk!r}")
    raise AssertionError(f"not a PNG, JPEG or WebP: {data[:12]!r}")


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def check_picture(b64: str | None, fmt: str, width: int, height: int) -> None:
    expect(bool(b64), "no b64_json")
    got = image_size(base64.b64decode(b64 or ""))
    expect(got == (fmt, width, height), f"expected a {fmt} of {width}x{height}, got {got}")


def check_usage(usage: object, pictures: int) -> None:
    expect(usage is not None, "no usage")
    u = usage  # type: ignore[assignment]
    expect(u.output_tokens > 0, f"output_tokens {u.output_tokens}")  # type: ignore[attr-defined]
    expect(u.input_tokens > 0, f"input_tokens {u.input_tokens}")  # type: ignore[attr-defined]
    expect(u.input_tokens_details.text_tokens == u.input_tokens, "input_tokens_details.text_tokens")  # type: ignore[attr-defined]
    expect(u.total_tokens == u.input_tokens + u.output_tokens, "total_tokens")  # type: ignore[attr-defined]
    expect(u.output_tokens % pictures == 0, f"output_tokens {u.output_tokens} for {pictures} pictures")  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="the emulator, http://127.0.0.1:PORT")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--azure-deployment", required=True, help="a deployment the emulator serves gpt-image-2 on")
    args = parser.parse_args()

    client = OpenAI(base_url=f"{args.base}/v1", api_key=args.api_key, max_retries=0, timeout=60)
    azure = AzureOpenAI(
        azure_endpoint=args.base, api_key=args.api_key, api_version="2025-04-01-preview", max_retries=0, timeout=60
    )
    checks: list[tuple[str, Callable[[], None]]] = []

    def check(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
        def register(fn: Callable[[], None]) -> Callable[[], None]:
            checks.append((name, fn))
            return fn

        return register

    @check("openai: gpt-image-2, n=2, 1536x1024 high opaque jpeg/80, moderation low, user")
    def _jpeg() -> None:
        raw = client.images.with_raw_response.generate(
            model="gpt-image-2",
            prompt=PROMPT,
            n=2,
            size="1536x1024",
            quality="high",
            background="opaque",
            output_format="jpeg",
            output_compression=80,
            moderation="low",
            user="u",
        )
        expect(raw.headers.get("x-request-id", "").startswith("req_"), "x-request-id")
        r = raw.parse()
        expect(r.data is not None and len(r.data) == 2, f"{len(r.data or [])} pictures")
        for item in r.data or []:
            check_picture(item.b64_json, "jpeg", 1536, 1024)
            expect(item.url is None and item.revised_prompt is None, "no url or revised_prompt")
        expect((r.size, r.quality, r.output_format, r.background) == ("1536x1024", "high", "jpeg", "opaque"),
               f"echo: {r.size} {r.quality} {r.output_format} {r.background}")
        check_usage(r.usage, 2)
        expect(r.usage is not None and r.usage.output_tokens == 2 * 6240, "OpenAI's table: 6240 a picture")
        expect(isinstance(r.created, int) and r.created > 0, "created")

    @check("openai: gpt-image-2.5-flare webp 1536x864 xhigh")
    def _webp() -> None:
        r = client.images.generate(
            model="gpt-image-2.5-flare", prompt=PROMPT, size="1536x864", quality="xhigh", output_format="webp"
        )
        check_picture(r.data[0].b64_json if r.data else None, "webp", 1536, 864)
        expect((r.size, r.quality, r.output_format) == ("1536x864", "xhigh", "webp"), "echo")
        check_usage(r.usage, 1)

    @check("openai: gpt-image-2 png with the defaults (auto size and quality)")
    def _png() -> None:
        r = client.images.generate(model="gpt-image-2", prompt=PROMPT)
        check_picture(r.data[0].b64_json if r.data else None, "png", 1024, 1024)
        expect((r.size, r.quality, r.output_format, r.background) == ("1024x1024", "medium", "png", "opaque"),
               f"echo: {r.size} {r.quality} {r.output_format} {r.background}")
        check_usage(r.usage, 1)

    @check("openai: stream with partial_images=2: two partial events, then completed with usage")
    def _stream() -> None:
        stream = client.images.generate(
            model="gpt-image-2", prompt=PROMPT, stream=True, partial_images=2, size="1024x1536", quality="low"
        )
        events = list(stream)
        kinds = [e.type for e in events]
        expect(kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], f"events {kinds}")
        for i, event in enumerate(events[:2]):
            expect(event.partial_image_index == i, f"partial_image_index {event.partial_image_index}")  # type: ignore[union-attr]
            check_picture(event.b64_json, "png", 1024, 1536)
        done = events[-1]
        check_picture(done.b64_json, "png", 1024, 1536)
        expect((done.size, done.quality, done.output_format) == ("1024x1536", "low", "png"), "completed echo")  # type: ignore[union-attr]
        check_usage(done.usage, 1)  # type: ignore[union-attr]

    @check("openai: a retired model (dall-e-3) raises NotFoundError")
    def _retired() -> None:
        for model in ("dall-e-3", "gpt-image-1"):
            try:
                client.images.generate(model=model, prompt=PROMPT)
            except openai.NotFoundError as e:
                expect(e.code == "model_not_found", f"{model}: code {e.code}")
                continue
            raise AssertionError(f"{model} answered")

    @check("openai: style (DALL-E only) raises BadRequestError naming the param")
    def _style() -> None:
        try:
            client.images.generate(model="gpt-image-2", prompt=PROMPT, style="vivid")
        except openai.BadRequestError as e:
            expect(e.param == "style", f"param {e.param}")
            return
        raise AssertionError("style was accepted")

    @check("openai: a wrong key raises AuthenticationError")
    def _auth() -> None:
        wrong = OpenAI(base_url=f"{args.base}/v1", api_key="sk-wrong-key-0000", max_retries=0)
        try:
            wrong.images.generate(model="gpt-image-2", prompt=PROMPT)
        except openai.AuthenticationError:
            return
        raise AssertionError("a wrong key was accepted")

    @check("azure: deployments path, api-version 2025-04-01-preview, jpeg with filter results")
    def _azure() -> None:
        raw = azure.images.with_raw_response.generate(
            model=args.azure_deployment, prompt=PROMPT, size="1536x1024", output_format="jpeg", output_compression=70
        )
        expect(bool(raw.headers.get("apim-request-id")), "apim-request-id")
        expect(f"/openai/deployments/{args.azure_deployment}/images/generations" in str(raw.http_request.url),
               f"url {raw.http_request.url}")
        r = raw.parse()
        check_picture(r.data[0].b64_json if r.data else None, "jpeg", 1536, 1024)
        expect((r.size, r.quality, r.output_format) == ("1536x1024", "high", "jpeg"), "echo (Azure's auto is high)")
        check_usage(r.usage, 1)
        item = r.data[0].model_dump() if r.data else {}
        expect("content_filter_results" in item and "prompt_filter_results" in item, f"filter results: {list(item)}")

    @check("azure: webp raises BadRequestError naming output_format")
    def _azure_webp() -> None:
        try:
            azure.images.generate(model=args.azure_deployment, prompt=PROMPT, output_format="webp")
        except openai.BadRequestError as e:
            expect(e.param == "output_format", f"param {e.param}")
            return
        raise AssertionError("webp was accepted on Azure")

    @check("azure: an api-version before 2025-04-01-preview raises BadRequestError")
    def _azure_old() -> None:
        old = AzureOpenAI(azure_endpoint=args.base, api_key=args.api_key, api_version="2024-10-21", max_retries=0)
        try:
            old.images.generate(model=args.azure_deployment, prompt=PROMPT)
        except openai.BadRequestError as e:
            expect(e.code == "BadRequest", f"code {e.code}")
            return
        raise AssertionError("an old api-version was accepted")

    @check("azure: an unknown deployment raises NotFoundError")
    def _azure_missing() -> None:
        try:
            azure.images.generate(model="no-such-deployment", prompt=PROMPT)
        except openai.NotFoundError as e:
            expect(e.code == "DeploymentNotFound", f"code {e.code}")
            return
        raise AssertionError("an unknown deployment answered")

    print(f"sdk-check: openai {openai.__version__} against {args.base}")
    passed = failed = 0
    for name, fn in checks:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
            failed += 1
            detail = str(e) or type(e).__name__
            print(f"FAIL {name}: {type(e).__name__}: {detail}")
            if not isinstance(e, AssertionError):
                traceback.print_exc(limit=3, file=sys.stdout)
        else:
            passed += 1
            print(f"PASS {name}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
