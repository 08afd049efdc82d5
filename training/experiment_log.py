"""Optional MLflow logging of training runs, for sites that keep their experiments there.

Only used when a tracking URI is given (``cxr-node train --mlflow-uri`` or the
``MLFLOW_TRACKING_URI`` variable); MLflow is an extra (``pip install cxr-node[mlflow]``),
never required: the run folder holds everything without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class ExperimentLog:
    """Parameters, per-epoch metrics and the run's files, to one MLflow run (or nowhere)."""

    def __init__(self, tracking_uri: str | None, experiment: str, run_name: str) -> None:
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self._mlflow = None
        if not tracking_uri:
            return
        try:
            import mlflow
        except ImportError:
            raise ValueError(f'MLflow tracking URI "{tracking_uri}" given, but MLflow is not '
                             "installed: pip install 'cxr-node[mlflow]'") from None
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment)
        mlflow.start_run(run_name=run_name)
        self._mlflow = mlflow

    @property
    def enabled(self) -> bool:
        return self._mlflow is not None

    def params(self, values: dict[str, Any]) -> None:
        if self._mlflow:
            self._mlflow.log_params({k: str(v)[:500] for k, v in values.items()})

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self._mlflow:
            self._mlflow.log_metrics({k: float(v) for k, v in values.items()
                                      if isinstance(v, int | float)}, step=step)

    def files(self, paths: list[Path]) -> None:
        if self._mlflow:
            for path in paths:
                if Path(path).exists():
                    self._mlflow.log_artifact(str(path))

    def end(self) -> None:
        if self._mlflow:
            self._mlflow.end_run()
