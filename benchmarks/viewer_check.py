"""The viewer in a real browser: start ns-viewer on a trained student, open it in headless Chromium, wait for a frame,
time the first 512 px and 1024 px frames, measure the viewer process's CPU with the tab idle, load the teachers and
switch to their blend, tick Split Screen, and look for tracebacks in the viewer's log (a dead render thread prints
one).

    python benchmarks/viewer_check.py --load-config outputs/demo/runs/student/distilled3dgs-student/run/config.yml

Needs Chromium (Debian: ``apt install chromium``) and Playwright from PyPI (``pip install playwright``; no browser
download: it drives the system Chromium). Screenshots go to --output-dir. Prints one line per check and a summary:
target, an idle tab costs the student's viewer under 2 CPU-seconds per 20 s.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

VIEWPORT = {"width": 1280, "height": 800}
RENDER_AREA = np.s_[80:760, 40:900]
"""Rows and columns of the screenshot inside the render (the panel sits right of column 960, the title above 50)."""


@dataclass
class Args:
    load_config: Path
    """config.yml of the trained student (or teacher: the teacher steps are then skipped)."""
    port: int = 7077
    """Websocket port of ns-viewer."""
    chromium: Path | None = None
    """Chromium executable (default: chromium on PATH)."""
    idle_s: float = 20.0
    """How long the tab stays idle while the viewer's CPU time is measured."""
    timeout_s: float = 180.0
    """Longest wait for the viewer to listen and for a frame."""
    output_dir: Path = Path("outputs/viewer_check")
    """Where the screenshots go."""


def wait_for_port(port: int, timeout_s: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"ns-viewer exited with code {process.returncode} before listening on port {port}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise SystemExit(f"ns-viewer did not listen on port {port} within {timeout_s:.0f} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def image_spread(path: Path) -> float:
    """Standard deviation of the pixels of a screenshot's render area (left of the panel, below the title bar):
    0 while the viewer shows no frame."""
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return float(pixels[RENDER_AREA].std())


def wait_for_frame(page, path: Path, timeout_s: float) -> float:
    """Screenshot until the page shows more than a flat background; returns the pixel spread."""
    deadline = time.monotonic() + timeout_s
    spread = 0.0
    while time.monotonic() < deadline:
        page.screenshot(path=str(path))
        spread = image_spread(path)
        if spread > 20.0:
            return spread
        time.sleep(2.0)
    return spread


def seconds_to_resolution(page, width: int, since: float, timeout_s: float) -> float | None:
    """Seconds from ``since`` until the panel reports a frame ``width`` pixels wide (None: never, within the time)."""
    pattern = re.compile(rf"Resolution: {width}\D")
    while time.monotonic() - since < timeout_s:
        if page.get_by_text(pattern).count():
            return time.monotonic() - since
        page.wait_for_timeout(100)
    return None


def main() -> None:
    args = tyro.cli(Args)
    from playwright.sync_api import sync_playwright

    chromium = args.chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no Chromium found: apt install chromium, or pass --chromium")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    log = (args.output_dir / "viewer.log").open("w")
    viewer = subprocess.Popen(
        ["ns-viewer", "--load-config", str(args.load_config), "--viewer.websocket-port", str(args.port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    results: dict[str, str] = {}
    try:
        wait_for_port(args.port, args.timeout_s, viewer)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(chromium), headless=True, args=["--no-sandbox", "--use-gl=angle"]
            )
            page = browser.new_page(viewport=VIEWPORT)
            opened = time.monotonic()
            page.goto(f"http://127.0.0.1:{args.port}")
            full = seconds_to_resolution(page, 512, opened, args.timeout_s)
            results["512 px frame"] = f"{full:.1f} s after opening the page (ok)" if full else "NEVER"
            spread = wait_for_frame(page, args.output_dir / "first_frame.png", args.timeout_s)
            results["first frame"] = f"pixel spread {spread:.1f} ({'ok' if spread > 20 else 'BLANK'})"
            page.locator("input[value='512']:visible").first.fill("1024", timeout=10_000)  # the Max res box
            page.keyboard.press("Enter")
            asked = time.monotonic()
            larger = seconds_to_resolution(page, 1024, asked, args.timeout_s)
            results["1024 px frame"] = f"{larger:.1f} s after asking for it (ok)" if larger else "NEVER"
            time.sleep(5.0)  # let the viewer reach its full-resolution static frame
            start = cpu_seconds(viewer.pid)
            time.sleep(args.idle_s)
            idle = cpu_seconds(viewer.pid) - start
            verdict = "ok" if idle < 2.0 * args.idle_s / 20.0 else "TOO BUSY"
            results["idle tab"] = f"{idle:.2f} CPU-s in {args.idle_s:.0f} s ({verdict})"
            loader = page.get_by_text("Load the teachers")
            if loader.count():
                loader.first.click()
                page.wait_for_timeout(15_000)
                page.get_by_text("Output type").first.click()  # the output dropdown, then its option
                page.get_by_role("option", name="teacher_blend").click()
                spread = wait_for_frame(page, args.output_dir / "teacher_blend.png", args.timeout_s)
                results["teacher_blend"] = f"pixel spread {spread:.1f} ({'ok' if spread > 20 else 'BLANK'})"
            else:
                results["teacher_blend"] = "n/a: no 'Load the teachers' box (not a student, or its teachers are gone)"
            page.get_by_text("Enable").first.click()  # Split Screen (its box comes before Crop Viewport's)
            spread = wait_for_frame(page, args.output_dir / "split_screen.png", args.timeout_s)
            results["split screen"] = f"pixel spread {spread:.1f} ({'ok' if spread > 20 else 'BLANK'})"
            page.wait_for_timeout(5_000)
            browser.close()
        log.flush()
        errors = (args.output_dir / "viewer.log").read_text().count("Traceback")  # before our Ctrl-C adds one
        results["viewer log"] = "ok (no tracebacks)" if errors == 0 else f"{errors} TRACEBACKS (see viewer.log)"
    finally:
        os.killpg(viewer.pid, signal.SIGINT)
        try:
            viewer.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(viewer.pid, signal.SIGKILL)
    log.close()
    for name, value in results.items():
        print(f"{name}: {value}")
    print(f"screenshots: {args.output_dir}")
    sys.exit(0 if all("ok" in value or value.startswith("n/a") for value in results.values()) else 1)


if __name__ == "__main__":
    main()
