"""Where fine-tuning runs (CPU or CUDA, in which precision), and how a long run survives being killed.

    device = resolve_device("auto")                    # cuda when torch sees one, else cpu
    dtype = autocast_dtype("auto", device)             # bf16 (or fp16) on CUDA, None (fp32) on CPU
    checkpoints = Checkpointer(folder, every=500)      # fine_tune saves its whole state every 500 steps ...
    fine_tune(..., checkpoints=checkpoints)            # ... and resumes from the folder's checkpoint if any

A checkpoint holds everything the next step depends on: weights, optimiser and scheduler state, the learning-rate
plan, the best weights so far and the early-stopping count, the random states (Python, NumPy, torch, and the
batch order's generator as it was when the epoch began, with how many of its batches were done). A run resumed
from it takes the steps the killed run would have taken: the same final weights, bit for bit, on the same
device and thread count (`tests/integration/test_finetune_resume.py`). A wall-time budget (`max_minutes`) re-plans
the schedule from the clock, so such a run is only resumable, not reproducible. The file is replaced atomically:
a kill while writing leaves the previous checkpoint.

Wherever training ran, the model is exported on the CPU in fp32: inference, and so every score, never depends
on it.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from churnsense.errors import UserError

CHECKPOINT_FILE = "checkpoint.pt"
OWNER_FILE = "owner.pid"
KILL_HOOK_ENV = "CHURNSENSE_FINETUNE_KILL_AT_STEP"  # tests: SIGKILL this process right after that step


def resolve_device(requested: str) -> torch.device:
    """ "auto": CUDA when torch sees a device, else the CPU; "cuda" without one is an error naming why."""
    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise UserError(
            f"device: cuda was asked for, but torch {torch.__version__} sees no CUDA device (a CPU-only build ends "
            "in +cpu; is a GPU visible, CUDA_VISIBLE_DEVICES set?); use device: auto or cpu"
        )
    if requested not in ("auto", "cpu", "cuda"):
        raise UserError(f"device: {requested!r} is not one of auto, cpu, cuda")
    return torch.device("cuda" if requested != "cpu" and available else "cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the forward pass: None means fp32. "auto" is bf16 on a CUDA device that has it,
    fp16 on one that does not, fp32 on the CPU; bf16 or fp16 on the CPU is an error (slower, not faster)."""
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise UserError(f"precision: {precision} needs a CUDA device; on the CPU training runs in fp32")
        return None
    if precision == "fp32":
        return None
    if precision == "auto":
        # Native bf16 only (Ampere and later): emulated bf16 on older cards is slower than fp16 with a scaler.
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


class Checkpointer:
    """A folder holding one checkpoint of a fine-tuning run, written every `every` steps."""

    def __init__(self, folder: str | Path, every: int | None) -> None:
        self.folder = Path(folder)
        self.every = every

    @property
    def path(self) -> Path:
        return self.folder / CHECKPOINT_FILE

    def claim(self) -> None:
        """Record that this process trains the run (`resumable_run` refuses a run whose process is alive)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / OWNER_FILE).write_text(str(os.getpid()), encoding="utf-8")

    def owner_alive(self) -> int | None:
        """The pid of a live process training this run, if any."""
        try:
            pid = int((self.folder / OWNER_FILE).read_text(encoding="utf-8"))
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid if pid != os.getpid() else None

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def save(self, state: dict[str, Any]) -> None:
        """Write `state` atomically (a temporary file, flushed, then renamed over the last one)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob("*.partial"):  # left by a process killed while writing
            stale.unlink(missing_ok=True)
        partial = self.path.with_suffix(f".{os.getpid()}.partial")
        with open(partial, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, self.path)

    def discard(self) -> None:
        """Remove the folder (a completed run needs no checkpoint: weights, best weights and two Adam moments
        are about 4.5 times the weights, ~400 MB for MiniLM-L6)."""
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none. Our own file: it holds Python and NumPy objects (random
        states), so it is read with `weights_only=False`."""
        if not self.path.exists():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)


def kill_hook(step: int) -> None:
    """Tests: with CHURNSENSE_FINETUNE_KILL_AT_STEP=N, the process kills itself (SIGKILL) after step N."""
    wanted = os.environ.get(KILL_HOOK_ENV)
    if wanted and int(wanted) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def checkpoint_folder(run_id: str) -> Path:
    """Where a sentiment run keeps its checkpoint: `<CHURNSENSE_CACHE_DIR>/checkpoints/<run id>`."""
    from churnsense.environment import paths

    return paths().cache_dir / "checkpoints" / run_id


@dataclass(frozen=True)
class StoppedRun:
    """What a resumed run needs of the run it continues."""

    run_id: str
    experiment_id: str
    data_sha256: str | None
    logged_steps: frozenset[int]  # validation steps already in its metric history (not logged twice)

    def continue_with(self, data_sha256: str) -> None:
        """Refuse other training data; make the run's own experiment the active one (`mlflow.start_run`)."""
        import mlflow

        if self.data_sha256 and self.data_sha256 != data_sha256:
            raise UserError(
                f"--resume {self.run_id}: the spec's reviews are not the data that run trained on (sha256 "
                f"{data_sha256} vs {self.data_sha256}); resume with the same files"
            )
        mlflow.set_experiment(experiment_id=self.experiment_id)


def resumable_run(run_id: str) -> tuple[dict[str, Any], Checkpointer, StoppedRun]:
    """The logged config of a run `train sentiment --resume` continues, its checkpoint, and the run.

    Raises:
        UserError: no such run, a deleted or finished one, one still running, or no checkpoint (it stopped
            before its first).
    """
    import mlflow
    import yaml
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from models.catalog import ready_store, tracking_uri

    mlflow.set_tracking_uri(ready_store(tracking_uri()))
    try:
        run = MlflowClient().get_run(run_id)
        local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/config/sentiment_config.yaml")
        config = yaml.safe_load(Path(local).read_text(encoding="utf-8"))
    except (MlflowException, OSError, yaml.YAMLError):
        raise UserError(f"--resume {run_id}: no sentiment run with that id in {tracking_uri()}") from None
    if run.info.lifecycle_stage == "deleted":
        raise UserError(f"--resume {run_id}: that run was deleted; restore it in MLflow first")
    if run.info.status == "FINISHED":
        raise UserError(f"--resume {run_id}: that run finished; there is nothing to resume")
    checkpoints = Checkpointer(checkpoint_folder(run_id), config.get("checkpoint_every_steps"))
    if not checkpoints.path.exists():
        raise UserError(
            f"--resume {run_id}: no checkpoint at {checkpoints.path} (the run saves one every "
            f"{config.get('checkpoint_every_steps')} steps; it stopped before the first): train it again"
        )
    alive = checkpoints.owner_alive()
    if alive is not None:
        raise UserError(f"--resume {run_id}: process {alive} is still training that run")
    steps = frozenset(m.step for m in MlflowClient().get_metric_history(run_id, "step_val_macro_f1"))
    stopped = StoppedRun(run_id, run.info.experiment_id, run.data.params.get("data_sha256"), steps)
    return config, checkpoints, stopped
