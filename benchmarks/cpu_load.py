"""s/step of a short CPU teacher alone, beside one busy single-threaded process, and beside a second training.

    python benchmarks/cpu_load.py                       # lego-100, 150 steps, both thread policies
    python benchmarks/cpu_load.py --policies adaptive   # only the default policy
    python benchmarks/cpu_load.py --loads alone viewer  # a browser tab watching the training in nerfstudio's viewer

Each policy trains the same teacher three times: alone, beside `python -c "while True: pass"`, and beside a second
copy of itself (started first and run for twice the steps, so it is busy for the whole measured window); with
``--loads viewer``, also with nerfstudio's viewer on and a headless Chromium tab watching it (Playwright and a system
Chromium needed), timed from the tab's first frame. s/step is the steady rate between the first and last logged steps
(nerfstudio's tensorboard events), so start-up is left out.
Policies: `adaptive` (the default: threads follow the free cores, cpu_threads.py) and `fixed` (torch's default
count held fixed: the behaviour before the policy). Run it with the machine to itself: it makes its own load.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro
from teacher_cpu import Args as TeacherArgs
from teacher_cpu import run_dir, train_command
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lego-100"
QUIET = "--steps-per-eval-image 100000 --steps-per-eval-batch 100000 --pipeline.model.num-downscales 0"
Load = Literal["alone", "busy", "training", "viewer"]
Policy = Literal["adaptive", "fixed"]
HEADERS = {
    "alone": "alone",
    "busy": "beside a busy process",
    "training": "beside a 2nd training",
    "viewer": "watched in the viewer",
}
VIEWER_PORT = 7087


@dataclass
class Args:
    data: Path = DEFAULT_DATA
    """Scene folder (Blender format unless --dataparser says otherwise)."""
    dataparser: str = "blender-data"
    """nerfstudio dataparser subcommand."""
    steps: int = 150
    """Steps of each measured training."""
    num_random: int = 5000
    """Random initial Gaussians of the teacher."""
    policies: tuple[Policy, ...] = ("adaptive", "fixed")
    """Thread policies to compare."""
    loads: tuple[Load, ...] = ("alone", "busy", "training")
    """What runs beside the measured training."""
    output_dir: Path = Path("outputs/benchmarks/cpu_load")
    """Where the trainings go (emptied first)."""


def teacher_args(args: Args, policy: Policy, steps: int, viewer: bool = False) -> TeacherArgs:
    threads = f" --pipeline.model.cpu-threads {torch.get_num_threads()}" if policy == "fixed" else ""
    watched = (
        f" --vis viewer+tensorboard --viewer.websocket-port {VIEWER_PORT} --viewer.quit-on-train-completion True"
        if viewer
        else ""
    )
    return TeacherArgs(
        data=args.data, steps=steps, output_dir=args.output_dir, dataparser=args.dataparser,
        extra=f"{QUIET} --pipeline.model.num-random {args.num_random}{threads}{watched}",
    )  # fmt: skip


def steady_s_per_step(run: Path, since: float = 0.0) -> float:
    """Seconds per step between the first and last step nerfstudio logged (at or after wall time ``since``)."""
    events = EventAccumulator(str(next(run.glob("events.out.tfevents.*"))))
    events.Reload()
    tag = next(t for t in events.Tags()["scalars"] if t.startswith("Train Iter"))
    logged = [event for event in events.Scalars(tag) if event.wall_time >= since]
    if len(logged) < 2:
        sys.exit(f"cpu_load.py: fewer than two logged steps in the measured window of {run}; train longer (--steps)")
    first, last = logged[0], logged[-1]
    return (last.wall_time - first.wall_time) / (last.step - first.step)


def chromium() -> str:
    """The system Chromium for ``--loads viewer``; exits with what to install when it or Playwright is missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None or importlib.util.find_spec("playwright") is None:
        sys.exit(
            "cpu_load.py: --loads viewer needs Chromium and Playwright (apt install chromium; pip install playwright)"
        )
    return path


@contextmanager
def browser_tab(port: int, done: subprocess.Popen, first_frame: list[float]) -> Iterator[None]:
    """A headless Chromium tab on the viewer at ``port`` while ``done`` runs; appends the wall time of its first
    frame to ``first_frame``."""
    from playwright.sync_api import sync_playwright
    from viewer_check import wait_for_port

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
        try:
            wait_for_port(port, 300.0, done)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"http://127.0.0.1:{port}")
            page.get_by_text(re.compile(r"Resolution: \d+")).first.wait_for(timeout=120_000)  # a frame arrived
            first_frame.append(time.time())
            yield
        finally:
            browser.close()


def start_load(load: Load, args: Args, policy: Policy) -> subprocess.Popen | None:
    if load == "busy":
        return subprocess.Popen([sys.executable, "-c", "while True: pass"])
    if load == "training":
        partner = train_command(teacher_args(args, policy, 2 * args.steps), f"{policy}-partner")
        process = subprocess.Popen(partner, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(5.0)  # let it finish loading, so the measured one starts beside a training, not its imports
        return process
    return None


def measure(args: Args, policy: Policy, load: Load) -> float:
    name = f"{policy}-{load}"
    beside = start_load(load, args, policy)
    measured = teacher_args(args, policy, args.steps, viewer=load == "viewer")
    first_frame: list[float] = []
    try:
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(train_command(measured, name), stdout=subprocess.DEVNULL, stderr=errors)
            with browser_tab(VIEWER_PORT, process, first_frame) if load == "viewer" else nullcontext():
                code = process.wait()
            errors.seek(0)
            if code != 0:
                sys.exit(f"cpu_load.py: the {name} training failed:\n{errors.read().decode()[-3000:]}")
    finally:
        if beside is not None:
            beside.kill()
            beside.wait()
    return steady_s_per_step(run_dir(measured, name), since=first_frame[0] if first_frame else 0.0)


def main() -> None:
    args = tyro.cli(Args)
    if not args.data.exists():
        sys.exit(f"cpu_load.py: --data {args.data} does not exist (lego-100 lies in ../shared/data)")
    if "viewer" in args.loads:
        chromium()  # missing: fail now, not after the other trainings
    shutil.rmtree(args.output_dir, ignore_errors=True)
    rows = {}
    for policy in args.policies:
        for load in args.loads:
            rows[policy, load] = measure(args, policy, load)
            print(f"{policy:8s} {load:8s} {rows[policy, load]:.4f} s/step", file=sys.stderr, flush=True)
    print(f"{args.steps}-step teacher on {args.data.name}, {torch.get_num_threads()} cores, s/step (x alone):")
    print("| policy | " + " | ".join(HEADERS[load] for load in args.loads) + " |")
    print("|---" * (len(args.loads) + 1) + "|")
    for policy in args.policies:
        alone = rows.get((policy, "alone"))
        cells = []
        for load in args.loads:
            value = rows[policy, load]
            ratio = f" ({value / alone:.2f}x)" if alone and load != "alone" else ""
            cells.append(f"{value:.4f}{ratio}")
        print(f"| {policy} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
