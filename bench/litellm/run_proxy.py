"""Start the LiteLLM proxy (same CLI arguments as `litellm`) with SDK retries off for image generation.

Why: for image generation LiteLLM ignores `max_retries` from the deployment's litellm_params (images/main.py
filters it out of the provider params, then llms/openai/openai.py does `data.pop("max_retries", 2)` and sets
that 2 on the router's cached AsyncOpenAI client), so the OpenAI SDK silently retries every 5xx/429/timeout
twice with backoff, i.e. 3 upstream calls per failed request even with num_retries: 0. This launcher makes
the default 0 (override with LITELLM_BENCH_SDK_MAX_RETRIES) so LiteLLM is a plain forwarder. With one
uvicorn worker the server runs in this process, so the patch applies to it.
"""

import os
import sys

from litellm.llms.openai.openai import OpenAIChatCompletion
from litellm.proxy.proxy_cli import run_server

_SDK_MAX_RETRIES = int(os.environ.get("LITELLM_BENCH_SDK_MAX_RETRIES", "0"))
_original = getattr(OpenAIChatCompletion, "image_generation", None)
if _original is None:
    sys.exit("run_proxy.py: OpenAIChatCompletion.image_generation not found; this litellm version is not supported")


def _image_generation(self, *args, **kwargs):
    optional_params = kwargs.get("optional_params")
    if isinstance(optional_params, dict):
        optional_params.setdefault("max_retries", _SDK_MAX_RETRIES)
    return _original(self, *args, **kwargs)


OpenAIChatCompletion.image_generation = _image_generation

if __name__ == "__main__":
    sys.argv[0] = "litellm"
    sys.exit(run_server())
