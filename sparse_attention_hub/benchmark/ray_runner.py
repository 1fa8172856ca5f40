"""RayRunner: the stubs of a benchmark matrix as Ray tasks, across the GPUs of a Ray cluster.

Each stub is one task with ``num_gpus=1`` when the cluster has GPUs (``num_cpus`` on a CPU-only
cluster), so Ray places one stub per GPU on every node. The task loads the model itself, runs
the stub with a :class:`StubWorker` into a scratch folder of its node and returns the files it
wrote; the driver writes them into the stub's result directory, ``config.json`` last. The result
tree therefore lives where the executor runs, shared file system or not, and is the one a local
run writes.

Workers need this package installed (and any ``data_dir`` of the benchmarks present) on every
node. Benchmarks and adapter factories must be registered on import of the package: ones
registered only in the driver's script are unknown to the workers.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

from .executor import Outcome, StubWorker
from .executor_config import BenchmarkFailure, BenchmarkStub
from .progress import progress
from .results import CONFIG, RESULT_FILES

#: How to get Ray, named in the error raised when it is missing.
RAY_INSTALL_HINT = "pip install 'ray[tune]'"
#: Files a stub wrote, by path relative to its result directory.
ResultFiles = Dict[str, bytes]


def import_ray() -> Any:
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ImportError(
            f"the Ray backend needs the 'ray' package, which is not installed: {RAY_INSTALL_HINT}"
        ) from error
    return ray


def connect(address: Optional[str] = None, **init_kwargs: Any) -> Any:
    """Ray, initialised: an existing session is kept; otherwise ``ray.init(address)`` (None: a
    new local instance, or the cluster in ``$RAY_ADDRESS``; ``"auto"``: the running cluster)."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address, **init_kwargs)
    return ray


def run_in_scratch(stub: BenchmarkStub, worker_args: Dict[str, Any]) -> Tuple[Outcome, ResultFiles]:
    """Runs ``stub`` in a temporary result directory; returns the outcome (for the original
    stub) and the files written there."""
    with tempfile.TemporaryDirectory(prefix="sah_stub_") as scratch:
        worker = StubWorker(**worker_args)
        try:
            outcome = worker.run(dataclasses.replace(stub, result_dir=scratch))
        finally:
            worker.close()
        root = Path(scratch)
        files = {
            path.relative_to(root).as_posix(): path.read_bytes()
            for path in sorted(root.rglob("*"))
            if path.is_file()
        }
    outcome.stub = stub
    return outcome, files


def write_result_files(result_dir: str, files: ResultFiles) -> None:
    """Replaces the result files of ``result_dir`` with ``files``, writing ``config.json`` (the
    completion mark) last."""
    root = Path(result_dir)
    root.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES:
        (root / name).unlink(missing_ok=True)
    for name in sorted(files, key=lambda n: n == CONFIG):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[name])


def _ray_task(stub: BenchmarkStub, worker_args: Dict[str, Any]) -> Tuple[Outcome, ResultFiles]:
    import ray

    device = "cuda" if ray.get_gpu_ids() else "cpu"
    return run_in_scratch(stub, {**worker_args, "device": device})


class RayRunner:
    """Runs every stub as a Ray task; yields the outcomes as the tasks finish.

    Args:
        address: the cluster for ``ray.init`` when Ray is not initialised yet (None: a local
            instance or ``$RAY_ADDRESS``; ``"auto"``: the running cluster; or ``"ray://..."``).
            Ray stays initialised after the run; ``ray.shutdown()`` ends it.
        num_gpus_per_task: GPUs of each task (default: 1 when the cluster has GPUs, else 0).
            A task with GPUs runs on ``"cuda"``, one without on ``"cpu"``.
        num_cpus_per_task: CPUs of each task (Ray also sets the task's thread count from it).
        max_retries: Ray's retries of a task whose worker process died (a stub that raises is a
            failure, never retried).
        init_kwargs: more arguments for ``ray.init``.
    """

    def __init__(
        self,
        address: Optional[str] = None,
        num_gpus_per_task: Optional[float] = None,
        num_cpus_per_task: float = 1,
        max_retries: int = 0,
        init_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        import_ray()
        if num_gpus_per_task is not None and num_gpus_per_task < 0:
            raise ValueError(f"num_gpus_per_task must be >= 0, got {num_gpus_per_task}")
        if num_cpus_per_task <= 0:
            raise ValueError(f"num_cpus_per_task must be > 0, got {num_cpus_per_task}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.address = address
        self.num_gpus_per_task = num_gpus_per_task
        self.num_cpus_per_task = num_cpus_per_task
        self.max_retries = max_retries
        self.init_kwargs = dict(init_kwargs or {})

    def task_resources(self, ray: Any) -> Dict[str, float]:
        """``num_gpus`` and ``num_cpus`` of each task on the connected cluster."""
        gpus = self.num_gpus_per_task
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        return {"num_gpus": gpus, "num_cpus": self.num_cpus_per_task}

    def run(self, stubs: Sequence[BenchmarkStub], worker_args: Dict[str, Any]) -> Iterator[Outcome]:
        if not stubs:
            return
        ray = connect(self.address, **self.init_kwargs)
        task = ray.remote(_ray_task).options(
            **self.task_resources(ray), max_retries=self.max_retries
        )
        args = ray.put(worker_args)
        pending = {task.remote(stub, args): stub for stub in stubs}
        try:
            for _ in progress(range(len(stubs)), desc="benchmark stubs (ray)", total=len(stubs)):
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                yield self._collect(ray, ref, pending.pop(ref))
        finally:
            for ref in pending:  # the caller stopped early
                ray.cancel(ref)

    @staticmethod
    def _collect(ray: Any, ref: Any, stub: BenchmarkStub) -> Outcome:
        try:
            outcome, files = ray.get(ref)
        except ray.exceptions.RayError as error:  # the task itself failed or its worker died
            cause = getattr(error, "cause", None) or error
            return BenchmarkFailure(stub, str(error), type(cause).__name__, 0.0)
        write_result_files(stub.result_dir, files)
        return outcome
