"""Experiment trackers for ``adapt`` (``report_to:``): TensorBoard, Weights & Biases, MLflow and Trackio get the
records of ``metrics.jsonl``, the resolved config and the final manifest. Each is an optional extra imported here;
each writes locally unless the user's environment points it elsewhere (never the network by default).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from domainlm.errors import ConfigError

# tracker -> (module to import, extra that installs it)
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
          "mlflow": ("mlflow", "mlflow"), "trackio": ("trackio", "trackio")}


def flat_metrics(record: dict[str, Any]) -> dict[str, float]:
    """A metrics record as ``type/name`` scalars (``eval/pubmed/ppl`` for a source of a mixture); non-finite and
    non-numeric values are left out."""
    kind = record.get("type", "train")
    out: dict[str, float] = {}

    def add(key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if math.isfinite(value):
            out[key] = float(value)

    for k, v in record.items():
        if k in ("type", "step"):
            continue
        if isinstance(v, dict):  # per-source records
            for name, sub in v.items():
                for kk, vv in (sub.items() if isinstance(sub, dict) else ()):
                    add(f"{kind}/{name}/{kk}", vv)
        else:
            add(f"{kind}/{k}", v)
    return out


def _flat_params(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_params(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def missing_trackers(report_to: list[str] | None) -> list[str]:
    """One problem per asked-for tracker whose package is not installed, with the install command."""
    import importlib.util

    out = []
    for i, name in enumerate(report_to or []):
        module, extra = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            out.append(f"'report_to[{i}]': {name} is not installed: pip install 'domainlm[{extra}]' (or drop it)")
    return out


class Tracker:
    """One tracker: ``log`` a metrics record, ``manifest`` at the end, ``close``."""

    def log(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def manifest(self, manifest: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoard(Tracker):
    def __init__(self, run_dir: Path, config: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.w = SummaryWriter(str(run_dir / "tensorboard"))
        self.w.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)

    def log(self, record):
        for k, v in flat_metrics(record).items():
            self.w.add_scalar(k, v, record.get("step", 0))

    def manifest(self, manifest):
        self.w.add_text("manifest", "```\n" + json.dumps(manifest, indent=2, default=str) + "\n```", 0)

    def close(self):
        self.w.close()


class WandB(Tracker):
    def __init__(self, run_dir: Path, config: dict[str, Any]):
        import wandb

        # offline unless the user's environment chose a mode: a run never reaches the network by default
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "domainlm"), name=run_dir.name,
                              dir=str(run_dir), config=config, mode=os.environ.get("WANDB_MODE", "offline"),
                              reinit="finish_previous")

    def log(self, record):
        self.run.log(flat_metrics(record), step=int(record.get("step", 0)))

    def manifest(self, manifest):
        self.run.summary["manifest"] = json.loads(json.dumps(manifest, default=str))

    def close(self):
        import wandb

        self.run.finish()
        wandb.teardown()  # waits for the background service to write the run's records before adapt returns


class MLflow(Tracker):
    def __init__(self, run_dir: Path, config: dict[str, Any]):
        import mlflow

        self.mlflow = mlflow
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:  # MLflow's local file store in the run folder (3.x asks for this opt-in to use it)
            uri = (run_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "domainlm")
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
        self.run_id = self.client.create_run(exp_id, run_name=run_dir.name).info.run_id
        params = _flat_params(config)
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
        self.client.log_dict(self.run_id, config, "config.json")

    def log(self, record):
        import time

        from mlflow.entities import Metric

        t, step = int(time.time() * 1000), int(record.get("step", 0))
        metrics = [Metric(k.replace("/", "."), v, t, step) for k, v in flat_metrics(record).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def manifest(self, manifest):
        self.client.log_dict(self.run_id, json.loads(json.dumps(manifest, default=str)), "manifest.json")

    def close(self):
        self.client.set_terminated(self.run_id)


class Trackio(Tracker):
    def __init__(self, run_dir: Path, config: dict[str, Any]):
        os.environ.setdefault("TRACKIO_DIR", str((run_dir / "trackio").resolve()))  # read when trackio is imported
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", "domainlm"), name=run_dir.name,
                                config=config)

    def log(self, record):
        self.trackio.log(flat_metrics(record), step=int(record.get("step", 0)))

    def manifest(self, manifest):
        # Trackio has no run summary: the manifest's top-level numbers (tokens, FLOPs, wall time) as one record
        self.trackio.log({f"manifest/{k}": v for k, v in manifest.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool)})

    def close(self):
        self.trackio.finish()


TRACKERS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow, "trackio": Trackio}


def open_trackers(report_to: list[str] | None, run_dir: Path, config: dict[str, Any]) -> list[Tracker]:
    """The trackers ``report_to`` asks for (unset: TensorBoard when installed), each started on ``run_dir``."""
    if report_to is None:
        import importlib.util

        report_to = ["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else []
    if problems := missing_trackers(report_to):
        raise ConfigError(problems)
    return [TRACKERS[name](run_dir, config) for name in report_to]
