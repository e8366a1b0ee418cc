"""Starting one training as an ns-train subprocess: its command line, its fingerprint (what makes a finished stage
finished), the up-front parse of its options, resuming from its latest checkpoint, and a one-line error when it fails.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tyro

from distilled3dgs_ns.checkpoints import (
    MODEL_DIR,
)
from distilled3dgs_ns.errors import TEACHER_CHECK_OPTION, UserError, error_line
from distilled3dgs_ns.run.config import TIMESTAMP, RunConfig, device_type_of
from distilled3dgs_ns.run.recipes import Training
from distilled3dgs_ns.stages import RunSetupError, fingerprint, write_json_atomic

STEP_PATTERN = re.compile(r"^\s*(\d+)\s+\(\s*\d+(?:\.\d+)?%\)", re.MULTILINE)
"""ns-train's progress lines start with ``<step> (<percent>%)``."""


TIME_NOTE_EVERY_S = 10.0
"""How often a running training's wall time is saved (what a killed attempt can lose from the training time)."""


def environment(config: RunConfig, gpu: str | None, parallel: int) -> dict[str, str]:
    """A training's environment: its GPU, or its share of the CPU cores when ``parallel`` trainings share them."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    threads = config.threads
    if threads is None and gpu is None and parallel > 1:
        threads = max(1, (os.cpu_count() or 1) // parallel)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def ns_train_command(
    training: Training, config: RunConfig, data: Path, runs: Path, resume_step: int | None
) -> list[str]:
    """The ns-train command line; a resumed run trains the remaining steps from the checkpoint after ``resume_step``."""
    remaining = training.steps if resume_step is None else training.steps - (resume_step + 1)
    command = [
        "ns-train", training.method,
        "--data", str(data),
        "--output-dir", str(runs),
        "--experiment-name", training.stage,
        "--timestamp", TIMESTAMP,
        "--max-num-iterations", str(remaining),
        "--steps-per-save", str(config.save_every),
        "--steps-per-eval-batch", "0",
        "--steps-per-eval-image", "0",
        "--steps-per-eval-all-images", "0",
        "--vis", "tensorboard",
        "--machine.device-type", device_type_of(config),
    ]  # fmt: skip
    if resume_step is not None:
        command += ["--load-dir", str(training.folder(runs) / MODEL_DIR)]
    return [*command, *training.options, config.dataparser, *shlex.split(config.dataparser_args)]


def training_fingerprint(training: Training, config: RunConfig, data: Path, runs: Path) -> str:
    """What a training's result depends on: its ns-train command without the checkpoint interval and with the output
    folder as a placeholder, so changing ``--save-every`` or moving the run folder keeps its stages and checkpoints."""
    command = ns_train_command(training, config, data, runs, None)
    interval = command.index("--steps-per-save")
    del command[interval : interval + 2]
    return fingerprint({"command": [arg.replace(str(runs.parent), "<output-dir>") for arg in command]})


def training_keys(
    training: Training, config: RunConfig, data: Path, runs: Path, record: dict[str, Any] | None = None
) -> tuple[str, str]:
    """The fingerprints a finished or interrupted training may carry: today's, and the legacy one (for the folder
    where ``record``, the training's stage record if any, says the run was when it finished)."""
    then = training.runs_of(Path(record["config"])) if record and "config" in record else runs
    return training_fingerprint(training, config, data, runs), legacy_fingerprint(training, config, data, runs, then)


def legacy_fingerprint(training: Training, config: RunConfig, data: Path, runs: Path, then: Path) -> str:
    """The fingerprint runs made before ``training_fingerprint`` recorded: the whole command, with the absolute paths
    of the run folder as it was then (``then``: its ``runs`` folder), so a moved run keeps its finished stages."""
    command = ns_train_command(training, config, data, runs, None)
    return fingerprint({"command": [arg.replace(str(runs.parent), str(then.parent)) for arg in command]})


def check_options(training: Training, config: RunConfig, data: Path, runs: Path) -> None:
    """Parse ``training``'s ns-train command line now, as ns-train will, so that a typo in a preset or in
    --model-args / --teacher-args / --student-args fails in seconds instead of when its stage starts."""
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    messages = io.StringIO()
    try:
        with contextlib.redirect_stderr(messages), contextlib.redirect_stdout(messages):
            tyro.cli(AnnotatedBaseConfigUnion, args=ns_train_command(training, config, data, runs, None)[1:])
    except SystemExit as error:
        lines = []
        for line in (line.strip(" │╭╮╰╯─") for line in messages.getvalue().splitlines()[1:]):  # [0]: box title
            if line.startswith("For full helptext"):
                break
            if line.strip("-") and not line.startswith("usage"):
                lines.append(line)
        reason = " ".join(lines)[:300]
        raise RunSetupError(
            f"{training.stage}: ns-train would refuse its options ({reason or f'exit {error.code}'}). Fix the "
            "option in the preset or in --model-args / --teacher-args / --student-args; nothing was trained."
        ) from None


class StageFailed(UserError):
    """A training subprocess failed; the message points at its log."""


def run_training(
    training: Training,
    config: RunConfig,
    data: Path,
    runs: Path,
    env: dict[str, str],
    on_step: Callable[[int], None],
    keys: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Run (or resume) one training to its final checkpoint; returns its figures for the stage record. ``keys``:
    its ``training_keys`` when the caller has them already.

    A checkpoint left by an interrupted run with *other* settings is never deleted: that is refused, pointing to
    ``--redo``. The wall time of every attempt is kept in ``<stage>.attempts.json`` (written before ns-train starts
    and every few seconds while it runs, so even a killed attempt counts) and the record reports the sum.
    """
    intent = runs / f"{training.stage}.attempts.json"
    keys = keys or training_keys(training, config, data, runs)
    key = keys[0]
    attempts = json.loads(intent.read_text()) if intent.exists() else {}
    resume_step = training.latest_checkpoint_step(runs)
    if attempts.get("fingerprint") not in keys:
        if resume_step is not None:
            raise RunSetupError(
                f"{training.stage} was interrupted at step {resume_step} with other settings than this command's; its "
                f"checkpoints in {training.folder(runs)} are kept. Re-run with the original settings to resume it, or "
                f"pass --redo {training.stage} to train it afresh."
            )
        shutil.rmtree(training.folder(runs), ignore_errors=True)  # no checkpoint: nothing to lose
    attempts = {"fingerprint": key, "seconds": attempts.get("seconds", []) if resume_step is not None else []}
    command = ns_train_command(training, config, data, runs, resume_step)
    log_path = runs / f"{training.stage}.log"
    start = last_write = time.perf_counter()
    attempts["seconds"].append(0.0)
    write_json_atomic(intent, attempts)

    def note_time() -> None:
        attempts["seconds"][-1] = time.perf_counter() - start
        write_json_atomic(intent, attempts)

    try:
        if resume_step is not None and resume_step >= training.steps - 1:
            code = 0
        else:
            with log_path.open("a") as log:
                log.write(f"$ {' '.join(command)}\n")
                log.flush()
                process = subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
                )
                assert process.stdout is not None
                for line in process.stdout:
                    log.write(line)
                    for match in STEP_PATTERN.finditer(line):
                        on_step(int(match.group(1)))  # ns-train counts from the loaded step
                    if time.perf_counter() - last_write > TIME_NOTE_EVERY_S:
                        note_time()
                        last_write = time.perf_counter()
                code = process.wait()
    finally:
        note_time()
    if code != 0 or not training.final_checkpoint(runs).exists():
        lines = log_path.read_text().splitlines() if log_path.exists() else []
        prefix = error_line("ns-train", "")
        ours = [i for i, line in enumerate(lines) if line.startswith(prefix)]  # a UserError, printed as one message
        if ours:
            follow = itertools.takewhile(lambda line: line.startswith("  "), lines[ours[-1] + 1 :])  # e.g. "  fix: ..."
            message = " ".join([lines[ours[-1]].removeprefix(prefix), *(line.strip() for line in follow)])
            raise StageFailed(f"{training.stage}: {message} (log: {log_path}). {_remedy(training, config, message)}")
        tail = "\n".join(lines[-15:])
        raise StageFailed(
            f"{training.stage}: ns-train exited with code {code}; last lines of {log_path}:\n{tail}\n"
            "Fix the cause and re-run the same command: finished stages are skipped and this one resumes from its "
            "latest checkpoint."
        )
    return {"resumed_from": resume_step, "train_s": sum(attempts["seconds"]), "attempts": len(attempts["seconds"])}


def _remedy(training: Training, config: RunConfig, message: str) -> str:
    """What to do after ns-train's one-line error. A failed teacher check is fixed on the teachers (redoing the
    student alone would fail again), so it is said in this command's options."""
    if TEACHER_CHECK_OPTION in message:
        teachers = " ".join(f"teacher-{variant}" for variant in config.variants)
        return (
            f"In this run: train the teachers longer (--teacher-steps more than {config.teacher_steps}, with --redo "
            f'{teachers}), or lower the check (--student-args="{TEACHER_CHECK_OPTION} <dB>").'
        )
    stage = training.stage
    return f"Fix the settings and pass --redo {stage}, or re-run as it is to resume from its latest checkpoint."
