"""Drive Open WebUI's own UI in headless Chromium (the OS's, never a downloaded one): a three-turn
chat about an image under its default settings, checked against llamadoc's access log, and a
screenshot. Runs in Open WebUI's venv (playwright comes with it): see run.sh."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync"]
QUESTIONS = ["What does this chart show?", "Which bar is the tallest?", "And what is the smallest one?"]
CHAT = re.compile(r"POST /api/chat (\d+) .*stream=(yes|no) images=(\d+) tools=(\d+)")


def chat_lines(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if "POST /api/chat " in line]


def dismiss(page: Page) -> None:
    """The release notes and onboarding dialogs a fresh install shows."""
    for label in ("Okay, Let's Go!", "Get started", "Dismiss", "Close"):
        button = page.get_by_role("button", name=label)
        if button.count() and button.first.is_visible():
            button.first.click()
            time.sleep(0.5)


def pick_model(page: Page, model: str) -> None:
    selector = page.get_by_role("button", name=re.compile("Select a model", re.I))
    if not selector.count():
        return  # one already chosen
    selector.first.click()
    page.get_by_text(model.split("/")[-1], exact=False).first.click()


def ask(page: Page, question: str, image: Path | None, log: Path, timeout: float) -> str:
    before = len(chat_lines(log))
    if image is not None:
        page.locator("input[type=file]").first.set_input_files(str(image))
        time.sleep(2)  # the upload's preview
    box = page.locator("#chat-input")
    box.click()
    page.keyboard.type(question)
    page.keyboard.press("Enter")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # the chat's own request (its follow-up tasks come after it)
        lines = chat_lines(log)[before:]
        streamed = [line for line in lines if "stream=yes" in line]
        if streamed:
            time.sleep(3)  # let the UI render the end of the answer
            return streamed[0]
        time.sleep(0.5)
    raise SystemExit(f"no answer within {timeout:.0f} s to {question!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", type=Path, required=True)
    ap.add_argument("--log", type=Path, required=True, help="llamadoc serve's stderr")
    ap.add_argument("--shot", type=Path, required=True)
    ap.add_argument("--timeout", type=float, default=180)
    a = ap.parse_args()
    results = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(a.url, wait_until="domcontentloaded", timeout=a.timeout * 1000)
            page.wait_for_selector("#chat-input", timeout=a.timeout * 1000)  # its socket keeps the network busy
            time.sleep(2)
            dismiss(page)
            pick_model(page, a.model)
            for i, q in enumerate(QUESTIONS):
                results.append(ask(page, q, a.image if i == 0 else None, a.log, a.timeout))
                page.screenshot(path=str(a.shot.with_name(f"{a.shot.stem}-turn{i + 1}{a.shot.suffix}")))
        finally:
            page.screenshot(path=str(a.shot), full_page=True)
            browser.close()
    print("Open WebUI's chat requests, as llamadoc logged them:")
    for line in results:
        print("  " + line)
    ok = all(m and m.group(1) == "200" for m in map(CHAT.search, results)) and len(results) == 3
    follow_up_images = all(int(CHAT.search(line).group(3)) > 0 for line in results)  # type: ignore[union-attr]
    print(f"3 turns: {'yes' if ok else 'no'}; image sent again on every turn: {'yes' if follow_up_images else 'no'}; "
          f"tools in the requests: {max(int(CHAT.search(line).group(4)) for line in results)}")  # type: ignore[union-attr]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
