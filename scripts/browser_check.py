"""The web playground in a real headless Chromium (Debian's package, driven by Playwright for Python).

Run by scripts/browser-check.sh against a standalone service it started:

  browser_check.py --base URL --phase open  --shots DIR
  browser_check.py --base URL --phase auth  --shots DIR --api-key igk_...

`open` (authentication off): the page loads with no script error or refused resource, the sandbox badge shows,
a job generated through the sandbox shows its picture (of the size asked) and `succeeded`, its card opens in the
gallery and its picture is deleted from there; then the same from the keyboard at phone width (no sideways
scrolling), and the page in dark mode. `auth` (authentication on): the page says the key is missing, then that a
wrong key was refused, and with the right key generates, shows, opens and deletes as above.

Screenshots go to --shots; one line per check; the last line is "N passed, M failed"; exit 1 on any failure.
"""

import argparse
import sys
import time
import urllib.error
import urllib.request

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
CHROMIUM = "/usr/bin/chromium"


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def run(self, name, fn, *args):
        started = time.monotonic()
        try:
            fn(*args)
        except (AssertionError, PlaywrightError) as e:
            self.failed += 1
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"FAIL {name}: {first}", flush=True)
            return False
        self.passed += 1
        print(f"ok   {name} ({time.monotonic() - started:.1f}s)", flush=True)
        return True


def watch(page, problems):
    """Script errors, refused resources (CSP) and failed requests other than the expected 401/404s."""

    def on_console(msg):
        if msg.type != "error":
            return
        text = msg.text
        # A 401 while the key is missing or wrong, a 404 from the events stream where the service has none.
        if text.startswith("Failed to load resource") and ("401" in text or "404" in text):
            return
        problems.append(f"console: {text}")

    page.on("console", on_console)
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))


def api_status(base, path, key=None):
    request = urllib.request.Request(base + path)
    if key:
        request.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def open_page(page, base):
    page.goto(base + "/", wait_until="domcontentloaded")
    expect(page).to_have_title("imagegen playground")
    # The model list comes from GET /api/v1/models.
    expect(page.locator("#model option").first).to_be_attached(timeout=10_000)


def generate(page, prompt, size="512x512", seed="7", keyboard=False):
    """Generates through the sandbox with flux-schnell; the job's id."""
    page.select_option("#model", "flux-schnell")
    page.select_option("#opt-size", size)
    page.fill("#opt-seed", seed)
    if keyboard:
        page.focus("#prompt")
        page.keyboard.type(prompt)
        page.keyboard.press("Control+Enter")
    else:
        page.fill("#prompt", prompt)
        page.click("#generate")
    status = page.locator("#current-status")
    expect(status).to_have_attribute("data-status", "succeeded", timeout=30_000)
    image = page.locator("#current-images img").first
    expect(image).to_be_visible()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=10_000
    )
    width = image.evaluate("img => img.naturalWidth")
    assert f"{width}x{width}" == size, f"the picture is {width} wide, asked {size}"
    cost = page.locator("#current-cost").inner_text()
    assert cost.startswith("Cost: "), f"no cost shown: {cost!r}"
    job_id = page.locator("#current").get_attribute("data-job-id")
    assert job_id, "the result panel names no job"
    return job_id


def gallery_open_and_delete(page, base, job_id, key=None):
    card = page.locator(f"#gallery li[data-job-id='{job_id}']")
    expect(card).to_be_visible(timeout=10_000)
    expect(card.locator(".pill")).to_have_text("succeeded")
    card.locator("button").click()
    dialog = page.locator("#details")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#details-status")).to_have_text("succeeded")
    image = dialog.locator(".images img").first
    expect(image).to_be_visible()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=10_000
    )
    image_id = dialog.locator("figure").first.get_attribute("data-image-id")
    assert image_id, "the details name no image"
    page.once("dialog", lambda d: d.accept())
    dialog.locator("#details-delete").click()
    expect(dialog).to_be_hidden(timeout=10_000)
    expect(card).to_have_count(0)
    status = api_status(base, f"/api/v1/images/{image_id}", key)
    assert status == 404, f"GET /api/v1/images/{image_id} answers {status} after the delete"


def no_sideways_scroll(page):
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than the phone's screen"


def phase_open(browser, base, shots, checks, problems):
    desktop = browser.new_context(viewport=DESKTOP)
    page = desktop.new_page()
    watch(page, problems)
    state = {}

    def loads():
        open_page(page, base)
        expect(page.locator("#sandbox-badge")).to_be_visible()
        # The chosen model's options: flux-schnell takes a seed; gpt-image-2 a quality and a background.
        page.select_option("#model", "gpt-image-2")
        expect(page.locator("#opt-quality")).to_be_visible()
        expect(page.locator("#opt-background")).to_be_visible()
        page.select_option("#model", "flux-schnell")
        expect(page.locator("#opt-seed")).to_be_visible()
        expect(page.locator("#opt-quality")).to_have_count(0)

    def generates():
        state["job"] = generate(page, "A lighthouse at dusk, oil painting")
        page.screenshot(path=f"{shots}/playground-desktop.png", full_page=True)

    def gallery():
        gallery_open_and_delete(page, base, state["job"])

    ok = checks.run("open: the page loads, with the sandbox badge and the model's options", loads)
    ok = ok and checks.run("open: generate through the sandbox; the picture and succeeded show", generates)
    if ok:
        checks.run("open: the job opens from the gallery and its picture is deleted", gallery)
    # A second job stays, so the gallery screenshots have a card.
    if ok:
        checks.run("open: a second job for the screenshots",
                   lambda: generate(page, "Mountain lake at sunrise", size="768x768", seed="3"))
        page.screenshot(path=f"{shots}/playground-desktop-gallery.png", full_page=True)
    desktop.close()

    phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = phone.new_page()
    watch(page, problems)

    def on_phone():
        open_page(page, base)
        generate(page, "A red bicycle leaning on a wall", keyboard=True)
        no_sideways_scroll(page)
        page.screenshot(path=f"{shots}/playground-phone.png", full_page=True)

    checks.run("open: at phone width, from the keyboard (Ctrl+Enter), with no sideways scrolling", on_phone)
    phone.close()

    dark = browser.new_context(viewport=DESKTOP, color_scheme="dark")
    page = dark.new_page()
    watch(page, problems)

    def in_dark():
        open_page(page, base)
        thumb = page.locator("#gallery img").first
        expect(thumb).to_be_visible(timeout=10_000)
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle(), timeout=10_000
        )
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background != "rgb(244, 245, 247)", f"the dark scheme kept the light background {background}"
        page.screenshot(path=f"{shots}/playground-dark.png", full_page=True)

    checks.run("open: dark mode (prefers-color-scheme)", in_dark)
    dark.close()


def phase_auth(browser, base, shots, key, checks, problems):
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    watch(page, problems)
    notice = page.locator("#notice")
    state = {}

    def missing():
        open_page(page, base)
        expect(notice).to_contain_text("needs an API key", timeout=10_000)
        expect(page.locator("#key-panel")).to_be_visible()
        page.screenshot(path=f"{shots}/auth-missing-key.png", full_page=True)

    def wrong():
        page.fill("#api-key", "igk_this-key-does-not-exist-0000000000")
        page.click("#key-form button[type=submit]")
        expect(notice).to_contain_text("refused", timeout=10_000)
        page.fill("#prompt", "A lighthouse at dusk")
        page.click("#generate")
        expect(notice).to_contain_text("refused", timeout=10_000)
        expect(page.locator("#current-status")).to_have_attribute("data-status", "failed")

    def right():
        page.click("#key-button") if page.locator("#key-panel").is_hidden() else None
        page.fill("#api-key", key)
        page.click("#key-form button[type=submit]")
        expect(notice).to_contain_text("Key saved", timeout=10_000)
        expect(page.locator("#gallery-empty")).to_contain_text("No jobs yet", timeout=10_000)
        state["job"] = generate(page, "A lighthouse at dusk, with a key")
        src = page.locator("#current-images img").first.get_attribute("src")
        assert "signature=" in src, f"the picture's link is not signed: {src}"
        page.screenshot(path=f"{shots}/auth-desktop.png", full_page=True)
        stored = page.evaluate("sessionStorage.getItem('imagegen.apiKey')")
        assert stored == key, "the key is not kept in sessionStorage"

    def gallery():
        gallery_open_and_delete(page, base, state["job"], key)

    ok = checks.run("auth: without a key the page says one is needed", missing)
    ok = ok and checks.run("auth: a wrong key is refused, clearly", wrong)
    ok = ok and checks.run("auth: the right key generates (signed picture link)", right)
    if ok:
        checks.run("auth: the job opens from the gallery and its picture is deleted", gallery)
    context.close()

    phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = phone.new_page()
    watch(page, problems)

    def on_phone():
        open_page(page, base)
        page.evaluate("k => sessionStorage.setItem('imagegen.apiKey', k)", key)
        page.reload()
        expect(page.locator("#model option").first).to_be_attached(timeout=10_000)
        generate(page, "A red bicycle leaning on a wall")
        no_sideways_scroll(page)
        page.screenshot(path=f"{shots}/auth-phone.png", full_page=True)

    checks.run("auth: at phone width with the key", on_phone)
    phone.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--phase", choices=["open", "auth"], required=True)
    parser.add_argument("--shots", required=True)
    parser.add_argument("--api-key")
    parser.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args()
    checks = Checks()
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=args.chromium, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            if args.phase == "open":
                phase_open(browser, args.base, args.shots, checks, problems)
            else:
                phase_auth(browser, args.base, args.shots, args.api_key, checks, problems)
        finally:
            browser.close()

    def clean():
        assert not problems, "; ".join(problems[:5])

    checks.run(f"{args.phase}: no script error, refused resource or failed request", clean)
    print(f"{checks.passed} passed, {checks.failed} failed", flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
