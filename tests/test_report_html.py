"""report.html: the report's markdown as a page with its pictures inlined, and the student to turn in a real browser
(headless Chromium from Debian, driven by Playwright from PyPI; skipped without them): the page loads from the file
system, the canvas is not blank, a drag turns the view, the toggle shows the teacher."""

from __future__ import annotations

import importlib.util
import shutil

import pytest
import torch
from helpers import look_at_camera, textured_splat

from distilled3dgs_ns.compression.model_io import gaussians_of
from distilled3dgs_ns.compression.splat import splat_bytes
from distilled3dgs_ns.report_html import (
    camera_file,
    camera_json,
    markdown_to_html,
    splat_file,
    viewer_section,
    write_report_html,
)
from distilled3dgs_ns.stages import write_json_atomic

CHROMIUM = shutil.which("chromium")
BROWSER = CHROMIUM is not None and importlib.util.find_spec("playwright") is not None
REPORT = """# Distilled-3DGS run report

Scene: `demo`; **student** first.

| model | PSNR |
|---|---|
| student | 33.22 |

- baseline-no-kd: +0.30 dB

![PSNR against #Gaussians](plot.png)
"""


def _run_folder(tmp_path, with_teacher: bool = True):
    """A run folder as the evaluation leaves it for the page: two models' .splat records and the first camera."""
    views = tmp_path / "views"
    views.mkdir()
    for name, seed in (("student", 0), ("teacher-standard", 1))[: 2 if with_teacher else 1]:
        gaussians = gaussians_of(textured_splat(sh_degree=0, num_points=400, seed=seed))
        splat_file(views, name).write_bytes(splat_bytes(gaussians))
    camera = look_at_camera((2.0, 0.5, 1.0), size=64)
    write_json_atomic(camera_file(views), camera_json(camera, gaussians.means))
    return tmp_path


def test_markdown_becomes_html_with_inlined_pictures(tmp_path):
    (tmp_path / "plot.png").write_bytes(b"\x89PNG fake")
    page = markdown_to_html(REPORT, tmp_path)
    assert "<h1>Distilled-3DGS run report</h1>" in page
    assert "<code>demo</code>" in page and "<b>student</b>" in page
    assert "<th>model</th><th>PSNR</th>" in page and "<td>student</td><td>33.22</td>" in page
    assert "<li>baseline-no-kd: +0.30 dB</li>" in page
    assert 'src="data:image/png;base64,' in page and "plot.png" not in page.split("base64,")[1]


def test_the_camera_starts_at_the_test_view_looking_at_the_splat():
    camera = look_at_camera((2.0, 0.5, 1.0), size=64)
    means = torch.randn(500, 3) * 0.1
    start = camera_json(camera, means)
    eye = torch.tensor(start["target"]) + start["distance"] * torch.tensor(
        [
            torch.cos(torch.tensor(start["pitch"])) * torch.cos(torch.tensor(start["yaw"])),
            torch.cos(torch.tensor(start["pitch"])) * torch.sin(torch.tensor(start["yaw"])),
            torch.sin(torch.tensor(start["pitch"])),
        ]
    )
    assert torch.allclose(eye, torch.tensor([2.0, 0.5, 1.0]), atol=1e-4)
    assert torch.tensor(start["target"]).norm() < 0.1  # the splat sits at the origin, where the camera looks
    assert (start["width"], start["height"]) == (64, 64)


def test_a_run_without_views_says_so(tmp_path):
    assert "No interactive view" in viewer_section(tmp_path / "views")
    assert "toggle" not in viewer_section(tmp_path / "views")


@pytest.mark.skipif(not BROWSER, reason="headless Chromium (Debian) and Playwright (PyPI) not installed")
def test_the_page_shows_the_student_and_a_drag_turns_it(tmp_path):
    from playwright.sync_api import sync_playwright

    folder = _run_folder(tmp_path)
    page_path = write_report_html(folder, REPORT)
    assert page_path.name == "report.html" and "teacher-standard" in page_path.read_text()
    flags = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
    drawn = """() => { const c = document.getElementById('splats'); const copy = document.createElement('canvas');
        copy.width = c.width; copy.height = c.height; const g = copy.getContext('2d'); g.drawImage(c, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data; const marked = [];
        for (let i = 0; i < d.length; i += 4) marked.push(d[i] + d[i + 1] + d[i + 2] < 740 ? 1 : 0);
        return marked; }"""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(page_path.as_uri())
        page.wait_for_selector("canvas[data-frames]", timeout=30_000)
        before = page.evaluate(drawn)
        box = page.locator("#splats").bounding_box()
        page.mouse.move(box["x"] + 100, box["y"] + 100)
        page.mouse.down()
        page.mouse.move(box["x"] + 260, box["y"] + 140, steps=4)
        page.mouse.up()
        after = page.evaluate(drawn)
        page.check("input[value='teacher-standard']")
        teacher = page.evaluate(drawn)
        browser.close()
    assert not errors, errors
    assert 0.02 < sum(before) / len(before) < 0.98  # splats on a white background, not a blank or a full canvas
    changed = sum(a != b for a, b in zip(before, after, strict=True))
    assert changed > 0.01 * len(before)  # the drag turned the view
    assert teacher != after  # another model
