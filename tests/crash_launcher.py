"""Test-only fork server: runs ``textgen.cli.main`` in a child that SIGKILLs itself at a chosen point.

Started once per test (``python crash_launcher.py``), it imports torch and textgen once, then reads
one JSON job per line from stdin: ``{"argv": [...], "log": PATH, "target": NAME, "n": N}`` or
``{"argv": [...], "log": PATH, "count": PATH}``. For each job it forks a child (the server is
single-threaded, so forking is clean and costs milliseconds instead of a fresh interpreter), and
answers one JSON line: ``{"killed": true}`` or ``{"killed": false, "code": EXIT_CODE}``.

The child wraps a few functions; on the N-th call of the ``target`` one it sends itself SIGKILL,
which no handler can see, exactly as a power cut or the OOM killer would end training. With
``count`` it kills nothing and writes how many times each target was reached. Targets:

- ``step``: before the N-th optimizer update (forward and backward done: mid-step);
- ``write``: before a checkpoint's weights are written (its config and tokenizer already are);
- ``torn``: after writing half of a checkpoint's ``model.safetensors``;
- ``torn_state``: after writing half of a checkpoint's ``trainer_state.pt``;
- ``fsync``: before the N-th fsync of a checkpoint file or directory;
- ``rename`` / ``renamed``: before / after the N-th rename of a checkpoint directory (so also after
  both renames of ``atomic_write_dir`` but before the old copy is deleted);
- ``swap``: between the two renames of ``atomic_write_dir``: the previous version has moved to
  ``.NAME.old`` and the new one is not yet in place;
- ``replace``: before the N-th ``os.replace`` of any file (token cache, logs, checkpoints);
- ``rmtree``: after deleting one file of a directory that is being removed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

TARGETS = ("step", "write", "torn", "torn_state", "fsync", "rename", "swap", "renamed", "replace", "rmtree")
CHECKPOINT_DIRS = {"latest", "best", ".latest.old", ".best.old"}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _truncate_to_half(path: Any) -> None:
    p = Path(path)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def install_faults(target: str | None, n: int, counts: Counter[str]) -> None:
    """Wrap the functions behind each target; die at the n-th call of ``target`` (never if None)."""
    import shutil

    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from textgen import checkpoint, files

    def hit(name: str) -> bool:
        counts[name] += 1
        return name == target and counts[name] == n

    def on_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        if hit("step"):
            _die()

    register_optimizer_step_pre_hook(on_step)

    real_save_model = checkpoint.save_model

    def save_model(model: Any, filename: str, *args: Any, **kwargs: Any) -> None:
        if hit("write"):
            _die()
        real_save_model(model, filename, *args, **kwargs)
        if hit("torn"):
            _truncate_to_half(filename)
            _die()

    checkpoint.save_model = save_model

    real_torch_save = torch.save

    def torch_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real_torch_save(obj, f, *args, **kwargs)
        if hit("torn_state"):
            _truncate_to_half(f)
            _die()

    torch.save = torch_save

    real_fsync = files.fsync

    def fsync(p: Path) -> None:
        if hit("fsync"):
            _die()
        real_fsync(p)

    files.fsync = fsync

    real_replace = os.replace

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        to = Path(dst)
        is_checkpoint = to.name in CHECKPOINT_DIRS
        # The second rename of a save: the new version goes in while the previous one sits in .NAME.old.
        swap = is_checkpoint and Path(src).name.endswith(".tmp") and (to.parent / f".{to.name}.old").exists()
        if hit("replace") or (is_checkpoint and hit("rename")) or (swap and hit("swap")):
            _die()
        real_replace(src, dst, *args, **kwargs)
        if is_checkpoint and hit("renamed"):
            _die()

    os.replace = replace

    real_rmtree = shutil.rmtree

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        p = Path(path)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        if files and hit("rmtree"):
            files[0].unlink()
            _die()
        real_rmtree(path, *args, **kwargs)

    shutil.rmtree = rmtree


def skip_drawing() -> None:
    """Replace the loss figure by a placeholder written the same atomic way: drawing it with matplotlib
    would take most of each short run's time, and the kills are about files, not pixels."""
    from textgen import report
    from textgen.files import atomic_write

    def plot_losses(run_dir: Path, out: Path | None = None) -> Path:
        path = Path(out) if out is not None else Path(run_dir) / "loss.png"
        atomic_write(path, b"placeholder")
        return path

    report.plot_losses = plot_losses


def run_child(job: dict[str, Any]) -> None:
    """In the forked child: send output to the job's log, install the faults, run the CLI, exit."""
    fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    code = 1
    try:
        from textgen.cli import main

        skip_drawing()
        counts: Counter[str] = Counter()
        install_faults(job.get("target"), int(job.get("n", 0)), counts)
        code = main(job["argv"])
        if job.get("count"):
            Path(job["count"]).write_text(json.dumps(counts))
    except BaseException as e:  # noqa: BLE001 -- report anything in the log, then exit with a code
        import traceback

        traceback.print_exc()
        code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    import torch

    import textgen.cli  # noqa: F401 -- imported once here, inherited by every child
    import textgen.report  # noqa: F401
    import textgen.training.run  # noqa: F401

    torch.set_num_threads(1)  # as the tests' own process: the same numbers, bit for bit
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo (seconds)
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_child(job)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            answer = {"killed": os.WTERMSIG(status) == signal.SIGKILL, "code": -os.WTERMSIG(status)}
        else:
            answer = {"killed": False, "code": os.WEXITSTATUS(status)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve()
