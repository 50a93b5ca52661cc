"""The official `openai` Python SDK, unchanged but for its base URL and key, against the running service's
OpenAI-compatible surface (`/v1/images/generations`, `/v1/models`, the errors in OpenAI's shape).

Run by scripts/openai-compat-check.sh, which installs the SDK into the CI tools' virtualenv, starts `imagegen
emulator` and the service (standalone, authentication on, OPENAI_* pointed at the emulator, RATE_LIMIT_PER_MINUTE,
PROVIDER_MAX_ATTEMPTS=1 and JOB_MAX_PROVIDER_CALLS=1) and mints the keys:

    OPENAI_COMPAT_KEY=igk_... OPENAI_COMPAT_LIMITED_KEY=igk_... \\
      python scripts/openai_compat_check.py --base http://127.0.0.1:PORT --emulator http://127.0.0.1:PORT2

The keys may also be given as --api-key / --limited-api-key (the environment keeps them out of `ps`). The limited
key's owner is used up by `models.list()` calls for the rate limit check (it must be a different owner from the main
key's), and the emulator is told to fail for the server error check (then reset), so run it against a service of its
own, not a shared one.

Prints one line per check (PASS/FAIL) and ends with "N passed, M failed"; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import traceback
import urllib.parse
import struct
import urllib.request
import zlib
from typing import Any, Callable

import openai
import pydantic
from openai import OpenAI
from openai.types import ImagesResponse
from openai.types.image_gen_completed_event import ImageGenCompletedEvent
from openai.types.image_gen_partial_image_event import ImageGenPartialImageEvent

# The same folder: the picture and usage helpers of the emulator's SDK check.
from sdk_check import check_usage, expect, image_size

PROMPT = "A lighthouse on a cliff at dusk, seen from the sea"
MODEL = "gpt-image-2"


def extras(model: pydantic.BaseModel, where: str = "") -> list[str]:
    """Every field the SDK's types do not declare, at any depth (`model_extra` of each model), as dotted paths."""
    found = [f"{where}{name}" for name in (model.model_extra or {})]
    for name in type(model).model_fields:
        value = getattr(model, name, None)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, pydantic.BaseModel):
                label = f"{where}{name}[{i}]." if isinstance(value, list) else f"{where}{name}."
                found += extras(item, label)
    return found


def validated(cls: type[pydantic.BaseModel], body: Any, what: str) -> tuple[Any, list[str]]:
    """`body` validated by the SDK's own type (a missing required field or a wrong type raises), and the fields in it
    the type does not declare."""
    try:
        parsed = cls.model_validate(body)
    except pydantic.ValidationError as e:
        errors = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(the body)'}: {err['msg']}" for err in e.errors())
        raise AssertionError(f"{what} does not validate as {cls.__name__}: {errors}") from None
    return parsed, extras(parsed)


def strict(cls: type[pydantic.BaseModel], body: Any, what: str) -> Any:
    """`body` validated by the SDK's own type, with no field the type does not declare."""
    parsed, extra = validated(cls, body, what)
    expect(not extra, f"{what}: fields {cls.__name__} does not declare: {extra}")
    return parsed


def contract(raw: Any) -> ImagesResponse:
    """A raw `images.generate` answer: its JSON is a strict `ImagesResponse`, and the SDK's own parse agrees."""
    body = raw.http_response.json()
    expect(isinstance(body, dict), f"the body is not an object: {body!r:.200}")
    strict(ImagesResponse, body, "the answer")
    parsed = raw.parse()
    expect(isinstance(parsed, ImagesResponse), f"parse() gave {type(parsed).__name__}")
    return parsed


def png(width: int, height: int, alpha: bool) -> bytes:
    """A small PNG made with the standard library: opaque grey, or RGBA with its left half transparent (a mask)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    channels = 4 if alpha else 3
    rows = b""
    for _ in range(height):
        row = bytearray(b"\x00")
        for x in range(width):
            row += bytes([128, 128, 128]) + (bytes([0 if x < width // 2 else 255]) if alpha else b"")
        rows += bytes(row)
    header = struct.pack(">IIBBBBB", width, height, 8, 6 if alpha else 2, 0, 0, 0)
    assert len(rows) == height * (1 + width * channels)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=os.environ.get("OPENAI_COMPAT_BASE"),
                        help="the service's root, http://127.0.0.1:PORT (env OPENAI_COMPAT_BASE)")
    parser.add_argument("--emulator", default=os.environ.get("OPENAI_COMPAT_EMULATOR"),
                        help="the emulator the service calls, http://127.0.0.1:PORT (env OPENAI_COMPAT_EMULATOR)")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_COMPAT_KEY"),
                        help="an API key of the service (env OPENAI_COMPAT_KEY)")
    parser.add_argument("--limited-api-key", default=os.environ.get("OPENAI_COMPAT_LIMITED_KEY"),
                        help="a key of another owner, to use up its RATE_LIMIT_PER_MINUTE (env OPENAI_COMPAT_LIMITED_KEY)")
    args = parser.parse_args()
    missing = [n for n in ("base", "emulator", "api_key", "limited_api_key") if not getattr(args, n)]
    if missing:
        parser.error(f"missing: {', '.join(missing)}")
    base = args.base.rstrip("/")
    emulator = args.emulator.rstrip("/")

    client = OpenAI(base_url=f"{base}/v1", api_key=args.api_key, max_retries=0, timeout=60)
    # The same SDK on the service's root, for its own endpoints (jobs, admin).
    root = OpenAI(base_url=base, api_key=args.api_key, max_retries=0, timeout=30)
    # A check raises on failure; what it returns is shown on its PASS line.
    checks: list[tuple[str, Callable[[], str | None]]] = []

    def check(name: str) -> Callable[[Callable[[], str | None]], Callable[[], str | None]]:
        def register(fn: Callable[[], str | None]) -> Callable[[], str | None]:
            checks.append((name, fn))
            return fn

        return register

    # Every request counts against the main key's owner's RATE_LIMIT_PER_MINUTE (20 in openai-compat-check.sh): these
    # checks make 18 with it, so the answer with the defaults is made once and shared by the checks that read it.
    shared: dict[str, Any] = {}

    def default_answer() -> Any:
        if "raw" not in shared:
            shared["raw"] = client.images.with_raw_response.generate(model=MODEL, prompt=PROMPT)
        return shared["raw"]

    @check("generate: b64_json by default, a 1024x1024 PNG with usage and the echoed options")
    def _b64() -> str | None:
        r = contract(default_answer())
        expect(r.data is not None and len(r.data) == 1, f"{len(r.data or [])} pictures")
        item = (r.data or [])[0]
        expect(item.url is None, f"a url besides b64_json: {item.url}")
        got = image_size(base64.b64decode(item.b64_json or ""))
        expect(got == ("png", 1024, 1024), f"picture {got}")
        expect((r.size, r.output_format) == ("1024x1024", "png"), f"echo: {r.size} {r.output_format}")
        check_usage(r.usage, 1)
        expect(isinstance(r.created, int) and r.created > 0, f"created {r.created}")

    @check("contract: the raw JSON is a strict ImagesResponse (no undeclared field in it, data[] or usage)")
    def _contract() -> str | None:
        body = default_answer().http_response.json()
        r = strict(ImagesResponse, body, "the answer")
        expect(r.model_extra == {}, f"response extras {r.model_extra}")
        for i, item in enumerate(r.data or []):
            expect(item.model_extra == {}, f"data[{i}] extras {item.model_extra}")
        expect(r.usage is not None and r.usage.model_extra == {}, "usage missing or with extras")
        expect(set(body) <= set(ImagesResponse.model_fields), f"keys {sorted(body)}")

    @check("generate: response_format=url is our own signed link, downloads a PNG with the key")
    def _url() -> str | None:
        raw = client.images.with_raw_response.generate(model=MODEL, prompt=PROMPT, response_format="url")
        r = contract(raw)
        expect(r.data is not None and len(r.data) == 1, f"{len(r.data or [])} pictures")
        item = (r.data or [])[0]
        expect(item.b64_json is None, "b64_json besides the url")
        url = urllib.parse.urlsplit(item.url or "")
        own = urllib.parse.urlsplit(base)
        expect((url.scheme, url.netloc) == (own.scheme, own.netloc), f"not on the service's host: {item.url}")
        expect(url.path.startswith("/api/v1/images/"), f"path {url.path}")
        request = urllib.request.Request(item.url or "", headers={"Authorization": f"Bearer {args.api_key}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            expect(answer.status == 200, f"download status {answer.status}")
            kind = answer.headers.get("content-type", "")
            data = answer.read()
        expect(kind.startswith("image/png"), f"content-type {kind}")
        expect(image_size(data) == ("png", 1024, 1024), f"downloaded {image_size(data)}")

    @check("generate: n=2, 1536x1024, quality high, background opaque, jpeg/80, moderation low, user")
    def _jpeg() -> str | None:
        raw = client.images.with_raw_response.generate(
            model=MODEL, prompt=PROMPT, n=2, size="1536x1024", quality="high", background="opaque",
            output_format="jpeg", output_compression=80, moderation="low", user="openai-compat-check",
        )
        r = contract(raw)
        expect(r.data is not None and len(r.data) == 2, f"{len(r.data or [])} pictures")
        for item in r.data or []:
            got = image_size(base64.b64decode(item.b64_json or ""))
            expect(got == ("jpeg", 1536, 1024), f"picture {got}")
        echo = (r.size, r.quality, r.background, r.output_format)
        expect(echo == ("1536x1024", "high", "opaque", "jpeg"), f"echo {echo}")
        check_usage(r.usage, 2)

    @check("generate: quality low, webp/50")
    def _webp() -> str | None:
        r = contract(client.images.with_raw_response.generate(
            model=MODEL, prompt=PROMPT, quality="low", output_format="webp", output_compression=50))
        got = image_size(base64.b64decode((r.data or [])[0].b64_json or "") if r.data else b"")
        expect(got == ("webp", 1024, 1024), f"picture {got}")
        expect((r.quality, r.output_format) == ("low", "webp"), f"echo {r.quality} {r.output_format}")
        check_usage(r.usage, 1)

    @check("generate: quality medium, png, 1024x1536")
    def _png() -> str | None:
        r = contract(client.images.with_raw_response.generate(
            model=MODEL, prompt=PROMPT, quality="medium", output_format="png", size="1024x1536"))
        got = image_size(base64.b64decode((r.data or [])[0].b64_json or "") if r.data else b"")
        expect(got == ("png", 1024, 1536), f"picture {got}")
        expect((r.size, r.quality, r.output_format) == ("1024x1536", "medium", "png"), "echo")
        check_usage(r.usage, 1)

    def stream_events(what: str, **params: Any) -> tuple[list[Any], list[Any], set[str]]:
        """A streamed generate's events, each validated by the SDK's own event type (every required field there):
        the partial events, the completed ones (all after the partials), and the undeclared fields seen."""
        events = list(client.images.generate(model=MODEL, prompt=PROMPT, stream=True, **params))
        kinds = [e.type for e in events]
        first_done = kinds.index("image_generation.completed") if "image_generation.completed" in kinds else len(kinds)
        expect(first_done < len(kinds), f"{what}: no image_generation.completed event in {kinds}")
        expect(all(k == "image_generation.partial_image" for k in kinds[:first_done]), f"{what}: events {kinds}")
        expect(all(k == "image_generation.completed" for k in kinds[first_done:]), f"{what}: events {kinds}")
        undeclared: set[str] = set()
        partials, done = [], []
        for i, event in enumerate(events):
            cls = ImageGenPartialImageEvent if i < first_done else ImageGenCompletedEvent
            parsed, extra = validated(cls, event.to_dict(), f"{what}: event {i} ({event.type})")
            (partials if i < first_done else done).append(parsed)
            undeclared.update(extra)
        return partials, done, undeclared

    def undeclared_note(undeclared: set[str]) -> str:
        # Not a failure: the emulator, our model of OpenAI, sends them too, and the SDK keeps them.
        return f"; fields the SDK's event types do not declare: {', '.join(sorted(undeclared))}" if undeclared else ""

    @check("stream=True, partial_images=2: partial events, then image_generation.completed with usage")
    def _stream() -> str | None:
        partials, done, undeclared = stream_events(
            "the stream", partial_images=2, size="1024x1536", quality="low")
        expect(len(partials) <= 2, f"{len(partials)} partial events for partial_images=2")
        for i, e in enumerate(partials):
            expect(e.partial_image_index == i, f"partial_image_index {e.partial_image_index}")
            expect(image_size(base64.b64decode(e.b64_json))[0] == "png", "a partial that is not a PNG")
        expect(len(done) == 1, f"{len(done)} completed events for one picture")
        last = done[-1]
        expect(image_size(base64.b64decode(last.b64_json)) == ("png", 1024, 1536), "the completed picture")
        expect((last.size, last.quality, last.output_format) == ("1024x1536", "low", "png"), "completed echo")
        check_usage(last.usage, 1)
        return f"{len(partials)} partial event(s), then completed{undeclared_note(undeclared)}"

    @check("stream=True, n=2: one image_generation.completed per picture, each with its usage (required)")
    def _stream_two() -> str | None:
        _, done, undeclared = stream_events("the stream of n=2", n=2, quality="low")
        expect(len(done) == 2, f"{len(done)} completed events for two pictures")
        for item in done:
            expect(image_size(base64.b64decode(item.b64_json)) == ("png", 1024, 1024), "a completed picture")
            check_usage(item.usage, 1)
        expect(done[0].b64_json != done[1].b64_json, "the same picture twice")
        return undeclared_note(undeclared).lstrip("; ") or None

    @check("generate: safety_identifier and complexity (GPT image fields of the SDK) are accepted")
    def _newer_fields() -> str | None:
        refused = []
        for field, value in (("safety_identifier", "openai-compat-check"), ("complexity", "low")):
            try:
                r = contract(client.images.with_raw_response.generate(
                    model=MODEL, prompt=PROMPT, quality="low", **{field: value}))  # type: ignore[arg-type]
            except openai.BadRequestError as e:
                refused.append(f"{field}: HTTP 400 {e.code}, {str(e.message)[:90]}...")
                continue
            expect(bool(r.data) and bool((r.data or [])[0].b64_json), f"{field}: no picture")
        expect(not refused, "; ".join(refused))

    @check("BadRequestError: an unknown model (no-such-model)")
    def _unknown_model() -> str | None:
        try:
            client.images.generate(model="no-such-model", prompt=PROMPT)
        except openai.BadRequestError as e:
            expect(e.status_code == 400, f"status {e.status_code}")
            expect(e.type == "invalid_request_error", f"type {e.type}")
            expect(e.param == "model", f"param {e.param}")
            return
        raise AssertionError("no-such-model answered")

    @check("BadRequestError: a moderated prompt is content_policy_violation")
    def _moderated() -> str | None:
        try:
            client.images.generate(model=MODEL, prompt=f"{PROMPT} emulator-moderate")
        except openai.BadRequestError as e:
            expect(e.code == "content_policy_violation", f"code {e.code}")
            expect(e.type == "invalid_request_error", f"type {e.type}")
            return
        raise AssertionError("a moderated prompt answered")

    @check("AuthenticationError: a wrong key")
    def _auth() -> str | None:
        wrong = OpenAI(base_url=f"{base}/v1", api_key="igk_not-a-key-of-this-service", max_retries=0, timeout=30)
        try:
            wrong.images.generate(model=MODEL, prompt=PROMPT)
        except openai.AuthenticationError as e:
            expect(e.code == "invalid_api_key", f"code {e.code}")
            expect(e.type == "authentication_error", f"type {e.type}")
            return
        raise AssertionError("a wrong key was accepted")

    @check("PermissionDeniedError: an API key on the admin endpoint (GET /api/v1/admin/keys)")
    def _forbidden() -> str | None:
        try:
            root.get("/api/v1/admin/keys", cast_to=object)
        except openai.PermissionDeniedError as e:
            expect(e.status_code == 403, f"status {e.status_code}")
            return
        raise AssertionError("an API key listed the admin keys")

    @check("RateLimitError: another owner over RATE_LIMIT_PER_MINUTE (models.list), with retry-after")
    def _rate_limit() -> str | None:
        limited = OpenAI(base_url=f"{base}/v1", api_key=args.limited_api_key, max_retries=0, timeout=30)
        # The window is a calendar minute: a limit of L may take up to 2L + 1 calls when one ends mid-way.
        for calls in range(1, 202):
            try:
                limited.models.list()
            except openai.RateLimitError as e:
                retry_after = e.response.headers.get("retry-after")
                expect(retry_after is not None and retry_after.isdigit(), f"retry-after {retry_after!r}")
                expect(e.code == "rate_limit_exceeded", f"code {e.code}")
                expect(e.type == "rate_limit_error", f"type {e.type}")
                return f"429 after {calls} calls, retry-after {retry_after} s"
        raise AssertionError("no 429 after 201 calls")

    @check("InternalServerError: the provider failing (emulator fail_next, one provider call per job)")
    def _server_error() -> str | None:
        def emulator_call(method: str, path: str, body: Any = None) -> Any:
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(f"{emulator}{path}", data=data, method=method,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as answer:
                text = answer.read()
            return json.loads(text) if text else None

        def errors() -> int:
            stats = emulator_call("GET", "/emulator/stats")
            return int((stats.get("openai") or {}).get("by_status", {}).get("500", 0))

        before = errors()
        emulator_call("PUT", "/emulator/config", {"openai": {"fail_next": 10, "error_status": 500}})
        try:
            try:
                client.images.generate(model=MODEL, prompt=PROMPT)
            except openai.InternalServerError as e:
                status, code = e.status_code, e.code
                expect(status >= 500, f"status {status}")
                expect(e.type == "server_error", f"type {e.type}")
                expect(bool(e.response.headers.get("x-imagegen-job-id")), "no x-imagegen-job-id on the error")
            else:
                raise AssertionError("answered while the provider fails")
            calls = errors() - before
            expect(calls == 1, f"the emulator answered {calls} x 500 (one provider call expected)")
            return f"HTTP {status} {code}"
        finally:
            emulator_call("POST", "/emulator/reset")

    @check(f"models.list() includes {MODEL}")
    def _models() -> str | None:
        ids = [m.id for m in client.models.list()]
        expect(MODEL in ids, f"models {ids}")

    @check("the job behind a generate: x-imagegen-job-id, GET /api/v1/jobs/{id} with cost.usd_micros > 0")
    def _job() -> str | None:
        raw = default_answer()
        job_id = raw.headers.get("x-imagegen-job-id")
        expect(bool(job_id), "no x-imagegen-job-id")
        job = root.get(f"/api/v1/jobs/{job_id}", cast_to=object)
        expect(isinstance(job, dict), f"job {job!r:.200}")
        assert isinstance(job, dict)
        expect(job.get("status") == "succeeded", f"status {job.get('status')}")
        micros = (job.get("cost") or {}).get("usd_micros")
        expect(isinstance(micros, int) and micros > 0, f"cost {job.get('cost')}")

    @check("images.edit: an image and a mask (multipart), b64_json in OpenAI's shape; a mask of the wrong size is a BadRequestError naming it")
    def _edit() -> str | None:
        raw = client.images.with_raw_response.edit(
            model=MODEL, prompt="Make the door red", image=("door.png", png(64, 64, False), "image/png"),
            mask=("mask.png", png(64, 64, True), "image/png"), input_fidelity="high")
        r = contract(raw)
        expect(r.data is not None and len(r.data) == 1, f"{len(r.data or [])} pictures")
        got = image_size(base64.b64decode((r.data or [])[0].b64_json or ""))
        expect(got[0] == "png", f"picture {got}")
        try:
            client.images.edit(model=MODEL, prompt="Make the door red",
                               image=("door.png", png(64, 64, False), "image/png"),
                               mask=("mask.png", png(32, 32, True), "image/png"))
        except openai.BadRequestError as e:
            expect("mask" in str(e), f"message {e}")
        else:
            raise AssertionError("a 32x32 mask on a 64x64 image was accepted")
        return f"job {raw.headers.get('x-imagegen-job-id')}"

    print(f"openai-compat: openai {openai.__version__} (Python) against {base}/v1")
    passed = failed = 0
    for name, fn in checks:
        try:
            note = fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
            failed += 1
            detail = str(e) or type(e).__name__
            print(f"FAIL {name}: {type(e).__name__}: {detail}")
            if not isinstance(e, AssertionError):
                traceback.print_exc(limit=3, file=sys.stdout)
        else:
            passed += 1
            print(f"PASS {name}" + (f" ({note})" if note else ""))
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
