"""The web demo's screenshot (docs/colorize-and-demo.md): start it on real models, colorize a photo, take the picture.

    python docs/demo_screenshot.py --models results/cpu-small/models/cnn results/cpu-small/models/gan \\
        results/cpu-small/models/diffusion --names CNN GAN Diffusion --output docs/demo.png

Needs the demo extra (Gradio), Playwright and a Chromium (`apt-get install chromium` on Debian), like the
browser test in tests/test_demo.py, which drives the page the same way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PHOTO = os.path.join(ROOT, "colorization", "demo_examples", "cat_chelsea.jpg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--names", nargs="+")
    parser.add_argument("--photo", default=DEFAULT_PHOTO)
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "demo.png"))
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "colorization.demo",
        "--models",
        *args.models,
        "--port",
        str(port),
        "--device",
        "cpu",
    ] + (["--names", *args.names] if args.names else [])
    demo = subprocess.Popen(command, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if demo.poll() is not None:
                    sys.exit("the demo stopped before serving its page")
                time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            page.locator("#upload input[type=file]").set_input_files(args.photo)
            expect(page.locator("#status")).to_contain_text("Colorized", timeout=300_000)
            time.sleep(1)  # the output images finish drawing
            page.screenshot(path=args.output, full_page=True)
            browser.close()
        print(f"wrote {args.output}")
    finally:
        demo.terminate()
        demo.wait(timeout=30)


if __name__ == "__main__":
    main()
