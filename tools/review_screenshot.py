"""Make docs/review.png, the README's picture of the review page.

    python tools/review_screenshot.py [docs/review.png]

The batch is the tests' (tests/review_helpers.py: printed invoices read by the pipeline), its
documents moved to invoices/ beside it so the page shows no path of this machine; the page is
drawn by headless Chromium from the OS packages, with a field selected and its box on the page,
and the picture is saved with a palette of 128 colours to keep the repository small.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.review_helpers import make_batch  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]


def main() -> None:
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "review.png")
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        made = make_batch(root / "made")
        (root / "invoices").mkdir()
        for name, path in made.docs.items():
            shutil.copyfile(path, root / "invoices" / name)
        shutil.copytree(made.out, root / "out", ignore=shutil.ignore_patterns(".llamadoc"))
        for result in (root / "out").glob("*.json"):
            text = result.read_text().replace(str(root / "made") + "/", "invoices/")
            result.write_text(text)
            assert json.loads(text)["source"].startswith("invoices/")
        process = subprocess.Popen([sys.executable, "-m", "llamadoc", "review", "out", "--no-browser"], cwd=root,
                                   stderr=subprocess.PIPE)
        assert process.stderr is not None
        url = None
        while url is None:
            line = process.stderr.readline().decode()
            if not line:
                raise SystemExit("llamadoc review did not start")
            found = re.search(r"at (http://\S+/)", line)
            url = found.group(1) if found else None
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                page.goto(url)
                expect(page.locator("#doc-title")).to_have_text("wrong.pdf")
                expect(page.locator(".sheet img").first).to_have_js_property("complete", True)
                page.keyboard.press("n")
                page.keyboard.press("Enter")  # the second field that needs a look: the seller's VAT ID
                expect(page.locator('.box.selected[data-path="seller.vat_id"]')).to_have_count(1)
                page.wait_for_timeout(300)
                shot = root / "shot.png"
                page.screenshot(path=str(shot))
                browser.close()
        finally:
            process.terminate()
            process.wait(20)
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.open(shot).convert("RGB").quantize(128).save(dest, optimize=True)
    print(f"wrote {dest} ({dest.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
