// The official `openai` Node SDK, unchanged but for its base URL and key, against the running service's
// OpenAI-compatible surface: generate (b64_json and url), streaming, models.list and the SDK's own error classes.
//
// Run by scripts/openai-compat-check.sh, which installs the SDK into a cache directory (never the checkout), starts
// the emulator and the service, and mints the keys:
//
//   OPENAI_COMPAT_KEY=igk_... OPENAI_COMPAT_LIMITED_KEY=igk_... OPENAI_COMPAT_SDK_DIR=/var/tmp/imagegen-ci-node/openai-X \
//     node scripts/openai_compat_check.mjs --base http://127.0.0.1:PORT
//
// OPENAI_COMPAT_LIMITED_KEY belongs to another owner, whose RATE_LIMIT_PER_MINUTE the rate limit check uses up.
// Prints one line per check (PASS/FAIL) and ends with "N passed, M failed"; exits 1 on any failure.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    base: { type: "string", default: process.env.OPENAI_COMPAT_BASE },
    "api-key": { type: "string", default: process.env.OPENAI_COMPAT_KEY },
    "limited-api-key": { type: "string", default: process.env.OPENAI_COMPAT_LIMITED_KEY },
    "sdk-dir": { type: "string", default: process.env.OPENAI_COMPAT_SDK_DIR },
  },
});
for (const name of ["base", "api-key", "limited-api-key", "sdk-dir"]) {
  if (!args[name]) {
    console.error(`openai_compat_check.mjs: missing --${name}`);
    process.exit(2);
  }
}
const base = args.base.replace(/\/+$/, "");
const apiKey = args["api-key"];

// The SDK from its cache directory: a bare `import "openai"` would resolve from this script's folder, the checkout.
const sdkDir = path.resolve(args["sdk-dir"]);
const sdk = createRequire(path.join(sdkDir, "package.json"))("openai");
const OpenAI = sdk.OpenAI ?? sdk.default;
// Not through `require`: the package's `exports` do not include its package.json.
const sdkVersion = JSON.parse(readFileSync(path.join(sdkDir, "node_modules/openai/package.json"), "utf8")).version;

const PROMPT = "A lighthouse on a cliff at dusk, seen from the sea";
const MODEL = "gpt-image-2";
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0, timeout: 60_000 });

function expect(condition, message) {
  if (!condition) throw new AssertionFailure(message);
}
class AssertionFailure extends Error {}

/** A PNG's width and height, from its IHDR chunk. */
function pngSize(bytes) {
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  expect(bytes.length > 24 && bytes.subarray(0, 8).equals(signature), `not a PNG: ${bytes.subarray(0, 8).toString("hex")}`);
  return [bytes.readUInt32BE(16), bytes.readUInt32BE(20)];
}

function checkPng(b64, width, height) {
  expect(typeof b64 === "string" && b64.length > 0, "no b64_json");
  const [w, h] = pngSize(Buffer.from(b64, "base64"));
  expect(w === width && h === height, `a PNG of ${w}x${h}, expected ${width}x${height}`);
}

function checkUsage(usage) {
  expect(usage, "no usage");
  expect(usage.output_tokens > 0 && usage.input_tokens > 0, `usage ${JSON.stringify(usage)}`);
  expect(usage.total_tokens === usage.input_tokens + usage.output_tokens, "total_tokens");
  expect(usage.input_tokens_details && typeof usage.input_tokens_details.text_tokens === "number", "input_tokens_details");
}

/** Runs `call`, which must throw an instance of `cls`; returns the error. */
async function expectError(cls, call, what) {
  try {
    await call();
  } catch (e) {
    expect(e instanceof cls, `${what}: ${e?.constructor?.name} (status ${e?.status}): ${e?.message}`);
    return e;
  }
  throw new AssertionFailure(`${what} answered`);
}

const checks = [];
const check = (name, fn) => checks.push([name, fn]);

check("generate: b64_json by default, a 1024x1024 PNG with usage", async () => {
  const r = await client.images.generate({ model: MODEL, prompt: PROMPT });
  expect(r.data?.length === 1, `${r.data?.length} pictures`);
  expect(r.data[0].url === undefined, "a url besides b64_json");
  checkPng(r.data[0].b64_json, 1024, 1024);
  expect(r.size === "1024x1024" && r.output_format === "png", `echo ${r.size} ${r.output_format}`);
  checkUsage(r.usage);
});

check("generate: response_format=url is our own signed link, downloads a PNG with the key", async () => {
  const { data: r, response } = await client.images
    .generate({ model: MODEL, prompt: PROMPT, response_format: "url" })
    .withResponse();
  expect(response.headers.get("x-imagegen-job-id"), "no x-imagegen-job-id");
  const url = new URL(r.data?.[0]?.url ?? "about:blank");
  expect(url.origin === new URL(base).origin, `not on the service's host: ${url}`);
  expect(r.data[0].b64_json === undefined, "b64_json besides the url");
  const answer = await fetch(url, { headers: { Authorization: `Bearer ${apiKey}` } });
  expect(answer.status === 200, `download status ${answer.status}`);
  expect((answer.headers.get("content-type") ?? "").startsWith("image/png"), `content-type ${answer.headers.get("content-type")}`);
  const [w, h] = pngSize(Buffer.from(await answer.arrayBuffer()));
  expect(w === 1024 && h === 1024, `downloaded ${w}x${h}`);
});

check("stream: true, partial_images: 2: partial events, then image_generation.completed with usage", async () => {
  const stream = await client.images.generate({
    model: MODEL, prompt: PROMPT, stream: true, partial_images: 2, size: "1024x1536", quality: "low",
  });
  const events = [];
  for await (const event of stream) events.push(event);
  const kinds = events.map((e) => e.type);
  expect(kinds.at(-1) === "image_generation.completed", `events ${kinds}`);
  const partials = events.slice(0, -1);
  expect(partials.every((e) => e.type === "image_generation.partial_image"), `events ${kinds}`);
  expect(partials.length <= 2, `${partials.length} partial events`);
  partials.forEach((e, i) => expect(e.partial_image_index === i, `partial_image_index ${e.partial_image_index}`));
  const done = events.at(-1);
  checkPng(done.b64_json, 1024, 1536);
  expect(done.size === "1024x1536" && done.quality === "low" && done.output_format === "png", "completed echo");
  checkUsage(done.usage);
  return `${partials.length} partial event(s), then completed`;
});

check(`models.list() includes ${MODEL}`, async () => {
  const ids = [];
  for await (const model of client.models.list()) ids.push(model.id);
  expect(ids.includes(MODEL), `models ${ids}`);
});

check("BadRequestError: an unknown model (no-such-model)", async () => {
  const e = await expectError(OpenAI.BadRequestError,
    () => client.images.generate({ model: "no-such-model", prompt: PROMPT }), "no-such-model");
  expect(e.status === 400 && e.type === "invalid_request_error" && e.param === "model",
    `status ${e.status} type ${e.type} param ${e.param}`);
});

check("BadRequestError: a moderated prompt is content_policy_violation", async () => {
  const e = await expectError(OpenAI.BadRequestError,
    () => client.images.generate({ model: MODEL, prompt: `${PROMPT} emulator-moderate` }), "a moderated prompt");
  expect(e.code === "content_policy_violation", `code ${e.code}`);
});

check("AuthenticationError: a wrong key", async () => {
  const wrong = new OpenAI({ baseURL: `${base}/v1`, apiKey: "igk_not-a-key-of-this-service", maxRetries: 0 });
  const e = await expectError(OpenAI.AuthenticationError,
    () => wrong.images.generate({ model: MODEL, prompt: PROMPT }), "a wrong key");
  expect(e.code === "invalid_api_key" && e.type === "authentication_error", `code ${e.code} type ${e.type}`);
});

check("RateLimitError: another owner over RATE_LIMIT_PER_MINUTE (models.list), with retry-after", async () => {
  const limited = new OpenAI({ baseURL: `${base}/v1`, apiKey: args["limited-api-key"], maxRetries: 0, timeout: 30_000 });
  // The window is a calendar minute: a limit of L may take up to 2L + 1 calls when one ends mid-way.
  for (let calls = 1; calls <= 201; calls++) {
    try {
      await limited.models.list();
    } catch (e) {
      expect(e instanceof OpenAI.RateLimitError, `${e?.constructor?.name} (status ${e?.status}): ${e?.message}`);
      const retryAfter = e.headers?.get("retry-after");
      expect(/^\d+$/.test(retryAfter ?? ""), `retry-after ${retryAfter}`);
      expect(e.code === "rate_limit_exceeded" && e.type === "rate_limit_error", `code ${e.code} type ${e.type}`);
      return `429 after ${calls} call(s), retry-after ${retryAfter} s`;
    }
  }
  throw new AssertionFailure("no 429 after 201 calls");
});

console.log(`openai-compat: openai ${sdkVersion} (Node ${process.version}) against ${base}/v1`);
let passed = 0;
let failed = 0;
for (const [name, fn] of checks) {
  try {
    const note = await fn();
    passed++;
    console.log(`PASS ${name}${note ? ` (${note})` : ""}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e?.constructor?.name}: ${e?.message}`);
    if (!(e instanceof AssertionFailure)) console.log(e?.stack?.split("\n").slice(1, 4).join("\n"));
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
