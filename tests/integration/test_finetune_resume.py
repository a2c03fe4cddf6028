"""Fine-tuning survives being killed: a run SIGKILLed mid-training and resumed with `--resume RUN_ID` ends with
exactly the weights of the same run left alone; where it ran is recorded; CUDA asked for without one is an error."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from churnsense.errors import UserError
from tests.sentiment_helpers import build_tiny_backbone, review_texts, write_reviews

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("resume")
    backbone = build_tiny_backbone(folder / "tiny_bert", seed=0)
    spec = write_reviews(folder / "reviews", review_texts(40, seed=2))
    name = f"test-resume-{uuid.uuid4().hex[:8]}"
    config = folder / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "backbone": str(backbone), "learning_rate": 5e-3, "batch_size": 8, "max_length": 24,
                "max_steps": 24, "epochs": 10, "eval_every_steps": 24, "patience": 10, "warmup_ratio": 0.1,
                "num_threads": 1, "seed": 4, "baseline": False, "checkpoint_every_steps": 5, "device": "cpu",
                "model_name": name, "experiment": name,
            }
        ),
        encoding="utf-8",
    )  # fmt: skip
    return {"spec": spec, "config": config, "name": name}


# Validated only at the last step: the weights kept are the last ones, so they depend on every step after the
# checkpoint (with earlier validations the best could predate the kill and hide a resume that went astray).


def _weights(result) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in result.classifier.model.state_dict().items()}


def test_a_killed_run_resumes_to_exactly_the_weights_of_an_uninterrupted_one(setup, tmp_path, monkeypatch):
    import mlflow

    from training.checkpoints import KILL_HOOK_ENV, checkpoint_folder
    from training.sentiment import train_sentiment

    monkeypatch.setenv("CHURNSENSE_CACHE_DIR", str(tmp_path / "cache"))
    alone = train_sentiment(setup["spec"], setup["config"])
    assert alone.training["steps"] == 24 and not checkpoint_folder(alone.run_id).exists()  # removed when done

    # The same run in another process, SIGKILLed right after step 13 (its last checkpoint: step 10).
    code = (
        "from training.sentiment import train_sentiment; "
        f"train_sentiment({str(setup['spec'])!r}, {str(setup['config'])!r})"
    )
    env = {**os.environ, KILL_HOOK_ENV: "13"}
    killed = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    (run_id,) = mlflow.search_runs(
        experiment_names=[setup["name"]], filter_string="attributes.status = 'RUNNING'", output_format="list"
    )
    run_id = run_id.info.run_id
    assert torch.load(checkpoint_folder(run_id) / "checkpoint.pt", weights_only=False)["step"] == 10

    # While another process still trains the run, it is not resumed twice.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (checkpoint_folder(run_id) / "owner.pid").write_text(str(sleeper.pid), encoding="utf-8")
        with pytest.raises(UserError, match=f"process {sleeper.pid} is still training that run"):
            train_sentiment(setup["spec"], resume=run_id)
    finally:
        sleeper.kill()
        sleeper.wait()
    resumed = train_sentiment(setup["spec"], resume=run_id)
    assert resumed.run_id == run_id and resumed.training["steps"] == 24
    mine, theirs = _weights(resumed), _weights(alone)
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key
    run = mlflow.get_run(run_id)
    assert run.data.tags["resumed_from_step"] == "10" and run.data.tags["device"] == "cpu"
    assert run.data.tags["precision"] == "fp32" and run.info.status == "FINISHED"

    def quality(metrics: dict) -> dict:  # speeds are measured, not reproduced
        return {k: v for k, v in metrics.items() if "per_second" not in k and "throughput" not in k}

    assert quality(resumed.metrics) == quality(alone.metrics)  # the same validation and test figures too
    with pytest.raises(UserError, match="finished"):
        train_sentiment(setup["spec"], resume=run_id)
    with pytest.raises(UserError, match="no sentiment run"):
        train_sentiment(setup["spec"], resume="0" * 32)


def test_cuda_without_a_device_and_half_precision_on_the_cpu_are_clear_errors():
    from training.checkpoints import autocast_dtype, resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(UserError, match="device: cuda was asked for, but torch .* sees no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu" and autocast_dtype("auto", torch.device("cpu")) is None
    for precision in ("bf16", "fp16"):
        with pytest.raises(UserError, match=f"precision: {precision} needs a CUDA device"):
            autocast_dtype(precision, torch.device("cpu"))
