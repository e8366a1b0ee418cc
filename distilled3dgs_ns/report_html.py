"""``report.html``: the run's report as one page that opens from the file system, with no server and no network: the
tables and pictures of ``report.md`` (pictures inlined) and the student, and with a toggle the standard teacher, to
turn with the mouse.

The viewer is our own small WebGL2 splat renderer (``web/viewer.js``, SH DC colour only) fed with each model's
``.splat`` records inlined as base64, so the page needs nothing else; it starts at the first test camera and orbits
about the scene's median point, nerfstudio's z up. The page is a preview: for the view-dependent colour, open the
student's SPZ or SOG in SuperSplat or the PlayCanvas viewer.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

VIEWER_MODELS = ("student", "teacher-standard")
"""The models the page can show, the first one at start (the evaluation writes ``views/<name>.splat`` for each)."""
CANVAS_WIDTH = 640


def splat_file(views: Path, name: str) -> Path:
    """Where the evaluation leaves a model's ``.splat`` records for the page (nerfstudio's frame)."""
    return views / f"{name}.splat"


def camera_file(views: Path) -> Path:
    """Where the evaluation leaves the first test camera (``camera_json``)."""
    return views / "camera.json"


def camera_json(camera: Any, means: Any) -> dict[str, Any]:
    """The page's start: the nerfstudio camera's intrinsics and an orbit (target, yaw, pitch, distance) about the
    point of the splat (``means`` ``[N, 3]``) nearest the view's axis at the median depth, so the first frame is the
    test view."""
    pose = camera.camera_to_worlds[0].double().cpu()
    eye, forward = pose[:, 3], -pose[:, 2]
    depth = float(((means.double().cpu() - eye) @ forward).median()) if len(means) else 1.0
    target = eye + max(depth, 1e-3) * forward
    back = (eye - target) / (eye - target).norm()
    return {
        "width": int(camera.width[0]),
        "height": int(camera.height[0]),
        "fx": float(camera.fx[0]),
        "fy": float(camera.fy[0]),
        "target": target.tolist(),
        "distance": float((eye - target).norm()),
        "yaw": math.atan2(float(back[1]), float(back[0])),
        "pitch": math.asin(max(-1.0, min(1.0, float(back[2])))),
    }


def _inline(line: str, output_dir: Path) -> str:
    """One markdown line's images (inlined as data URIs), code spans and bold, the rest escaped."""
    parts = []
    for piece in re.split(r"(!\[[^\]]*\]\([^)]*\))", line):
        image = re.fullmatch(r"!\[([^\]]*)\]\(([^)]*)\)", piece)
        if image and (output_dir / image.group(2)).is_file():
            data = base64.b64encode((output_dir / image.group(2)).read_bytes()).decode()
            parts.append(f'<img alt="{html.escape(image.group(1))}" src="data:image/png;base64,{data}">')
            continue
        text = html.escape(piece)
        text = re.sub(r"`([^`]*)`", r"<code>\1</code>", text)
        parts.append(re.sub(r"\*\*([^*]*)\*\*", r"<b>\1</b>", text))
    return "".join(parts)


def markdown_to_html(text: str, output_dir: Path) -> str:
    """The subset of markdown ``report.md`` uses: headings, tables, lists, images and paragraphs."""
    out: list[str] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip(), output_dir)}</h{level}>")
        elif line.startswith("|"):
            rows = []
            while index < len(lines) and lines[index].startswith("|"):
                if not re.fullmatch(r"\|[-| ]+\|", lines[index]):
                    rows.append([cell.strip() for cell in lines[index].strip("|").split("|")])
                index += 1
            head, *body = rows
            out.append("<table><tr>" + "".join(f"<th>{_inline(c, output_dir)}</th>" for c in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{_inline(c, output_dir)}</td>" for c in row) + "</tr>" for row in body]
            out.append("</table>")
            continue
        elif line.startswith("- "):
            out.append("<ul>")
            while index < len(lines) and lines[index].startswith("- "):
                out.append(f"<li>{_inline(lines[index][2:], output_dir)}</li>")
                index += 1
            out.append("</ul>")
            continue
        elif line.strip():
            out.append(f"<p>{_inline(line, output_dir)}</p>")
        index += 1
    return "\n".join(out)


def viewer_section(views: Path) -> str:
    """The canvas, the model toggle and the script, or one line saying why there is no view."""
    models = {name: splat_file(views, name) for name in VIEWER_MODELS if splat_file(views, name).is_file()}
    if "student" not in models or not camera_file(views).is_file():
        return "<p>No interactive view: this run's evaluations predate it (run with --redo student to add it).</p>"
    camera = json.loads(camera_file(views).read_text())
    camera["background"] = [1.0, 1.0, 1.0]
    data = {name: base64.b64encode(path.read_bytes()).decode() for name, path in models.items()}
    height = round(CANVAS_WIDTH * camera["height"] / camera["width"])
    buttons = "".join(
        f'<label><input type="radio" name="model" value="{name}"{" checked" if name == "student" else ""}> {name}'
        "</label> "
        for name in models
    )
    script = files("distilled3dgs_ns.web").joinpath("viewer.js").read_text()
    return (
        f"<h2>The student in 3-D</h2><p>Drag to turn, scroll to zoom; colour without view dependence. {buttons}</p>"
        f'<canvas id="splats" width="{CANVAS_WIDTH}" height="{height}"></canvas>'
        f"<script>{script}\nconst MODELS = {json.dumps(data)};\nconst CAMERA = {json.dumps(camera)};\n"
        "const viewer = createViewer(document.getElementById('splats'), MODELS, CAMERA);\n"
        "viewer.show('student');\n"
        "document.querySelectorAll('input[name=model]').forEach((input) =>"
        " input.addEventListener('change', () => viewer.show(input.value)));\n</script>"
    )


STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
    "img{max-width:100%}canvas{border:1px solid #ccc;cursor:grab}"
)


def write_report_html(output_dir: Path, markdown: str) -> Path:
    """Write ``report.html`` beside ``report.md`` (whose text is ``markdown``); returns its path."""
    from distilled3dgs_ns.durable import write_atomic

    body = markdown_to_html(markdown, output_dir) + viewer_section(output_dir / "views")
    page = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Distilled-3DGS run report</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )
    path = output_dir / "report.html"
    write_atomic(path, page.encode())
    return path
