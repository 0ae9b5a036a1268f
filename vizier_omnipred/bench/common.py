"""Small helpers shared by the benchmark modules: seeds, JSON files, plotting setup."""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

# Benchmark tasks draw their seeds from this range so that they never coincide with the
# seeds of pretraining corpora (which start at 0): a pretrained model must not have seen the
# exact synthetic function it is benchmarked on.
BENCH_SEED_OFFSET = 1_000_000


def stable_seed(*parts: Any) -> int:
    """A deterministic 31-bit seed from any printable parts (Python's hash() is salted per
    process, which would give spawned workers different tasks than the parent planned)."""
    text = "\x1f".join(str(p) for p in parts)
    return BENCH_SEED_OFFSET + zlib.crc32(text.encode("utf-8")) % (2**31 - 1 - BENCH_SEED_OFFSET)


def jsonable(obj: Any) -> Any:
    """Converts numpy scalars/arrays and non-finite floats (JSON has no nan) recursively."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_json(config: Any) -> dict[str, Any]:
    """A benchmark's attrs config as the JSON it records next to its results (paths as text)."""
    import attrs

    return attrs.asdict(config, value_serializer=lambda _inst, _field, v: str(v) if isinstance(v, Path) else v)


_Item = TypeVar("_Item")


def run_spawned(
    fn: Callable[[_Item], Any], items: Sequence[_Item], workers: int
) -> Iterator[tuple[_Item, Any, BaseException | None]]:
    """Runs `fn(item)` for every item in `workers` spawned processes and yields `(item,
    result, None)` as each finishes, or `(item, None, error)` when it raised or its worker
    died (killed, out of memory). A dead worker breaks the pool: its item and those still
    pending come back with the error (BrokenProcessPool), and the caller records them as
    failed runs instead of losing the ones already finished.

    Spawned, not forked: JAX and torch hold threads and locks that a forked child would
    inherit in an undefined state. `fn` and the items must be picklable (module-level).
    """
    import concurrent.futures as cf
    import multiprocessing

    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(fn, item): item for item in items}
        for fut in cf.as_completed(futures):
            try:
                yield futures[fut], fut.result(), None
            except BaseException as e:  # noqa: BLE001 - e.g. BrokenProcessPool
                yield futures[fut], None, e


def floats(values: Iterable[Any]) -> np.ndarray:
    """Inverse of `jsonable` for a list of numbers: None -> nan."""
    return np.array([math.nan if v is None else float(v) for v in values], dtype=float)


def write_json_atomic(path: Path, data: Any) -> None:
    """Writes via a temporary file and rename, so an interrupted run never leaves a
    half-written result that --resume would take for a finished one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(jsonable(data), f, indent=1, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> Any | None:
    """The parsed file, or None if missing or unreadable (treated as not done)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def environment_info() -> dict[str, Any]:
    """Versions and machine facts recorded next to results (timings are machine-specific)."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
    }
    try:
        import vizier

        info["vizier"] = getattr(vizier, "__version__", "?")
    except ImportError:  # pragma: no cover - Vizier is a hard dependency
        pass
    return info


def set_torch_threads(threads: int | None) -> None:
    """torch's intra-op threads for this process (None or 0: leave torch's default).

    Benchmarks pin this so that runs beside each other on a shared machine take one core
    each, and so that a figure says how many threads it was measured with. torch is
    imported here, not at module level: the bench's front end runs without it."""
    if threads is not None and threads < 0:
        raise ValueError(f"threads must be >= 1, or 0 / None for torch's default; got {threads}")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def pyplot():
    """matplotlib.pyplot on the Agg backend (benchmarks run headless and in workers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def parse_csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def parse_int_csv(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in parse_csv(text))
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def median_or_nan(values: Iterable[float]) -> float:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(np.median(arr)) if arr.size else math.nan


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}f}"
