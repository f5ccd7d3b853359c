"""The Ray engine: an estimator's model work sharded over a Ray cluster with Ray Data.

``AttentionCropper``, ``CropEmbedder`` and ``ZeroShotCLIPClassifier`` take ``engine="ray"``
(and ``engine_options``, a dict). Their ``transform`` (the classifier's scores) then runs as a
Ray Data pipeline: the image positions, in blocks of one batch; CPU tasks that read, decode
and resize the images of each batch (:func:`read_batch`; crops cut from the original pixels are
read by the actors instead); a pool of actors (``num_gpus=1`` each when the cluster has GPUs and
the estimator's device is not the CPU, else CPU actors) each loads the model once and runs the
estimator's own in-process code on its batches (at the estimator's ``precision``, with its
``cache``, keyed by the sources' content as in-process); and the driver writes every batch's
rows at their positions, so the result is in input order and equal to the in-process result.

Ray is joined as :func:`connect` says: a cluster only when ``engine_options["address"]`` or
``RAY_ADDRESS`` names one, else a private local instance. :func:`plan_resources` checks the pool
against the cluster's resources before anything starts (a request it can never hold is a
``ValueError`` naming the option), and the wait for the actors to start is bounded by the
``start_timeout`` option.

Actors that die are restarted and their batches retried (Ray Data's default, bounded by the
``max_restarts`` and ``max_task_retries`` options). A disk ``cache`` on a path every node sees
is filled by the actors, so later in-process fits read it back without running a model. See
``docs/ray.md``.

This module imports Ray only when the engine runs; without Ray, asking for it raises an
ImportError that gives the install command.
"""

from __future__ import annotations

import atexit
import copy
import math
import numbers
import os
import time
from collections import defaultdict

import numpy as np

from ._param_validation import Rule, StrOptions
from .cropset import CropSet
from .images import Decoded, Subset, as_sources, load_resized, take
from .outputs import write_file_rows, write_rows

__all__ = ["ENGINE_CONSTRAINTS", "ENGINE_OPTIONS", "check_engine", "connect", "decode_size_of",
           "plan_resources", "read_batch", "run_sharded"]

INSTALL = 'pip install "sk-a2[ray]"'

#: Memory (bytes) a reading task reserves besides its decoded batch: one worker process with the
#: package (and so torch) imported.
READ_TASK_MEMORY = 1 << 30

#: ``engine_options`` keys and what each accepts.
ENGINE_OPTIONS = {
    "num_actors": "number of model actors (int >= 1; default: one per GPU, else 2; fewer when "
                  "the cluster's CPUs hold fewer beside a reading task)",
    "batch_size": "images per Ray batch (int >= 1; default: the estimator's batch_size)",
    "num_gpus": "GPUs per actor (number >= 0; default: 1 when the cluster has GPUs and device "
                "is not 'cpu', else 0)",
    "num_cpus": "CPUs per actor (number > 0; default: 1)",
    "max_restarts": "restarts of a dead actor (int >= -1, -1: unlimited; default: Ray Data's, -1)",
    "max_task_retries": "retries of a dead actor's batch (int >= -1; default: Ray Data's, -1)",
    "read_cpus": "CPUs per image-reading task (number > 0; default: 1)",
    "address": 'Ray cluster to join (str, e.g. "auto", "10.0.0.5:6379", "ray://head:10001"; '
               'default: the RAY_ADDRESS environment variable, else a private local instance)',
    "start_timeout": "seconds to wait for the model actors to start (number > 0; default: "
                     "600); past it a TimeoutError names the resources asked for and free",
}

#: Seconds the model actors may take to start (``engine_options["start_timeout"]``).
START_TIMEOUT = 600

#: Parameter rules of ``engine`` and ``engine_options`` (merged into ``_parameter_constraints``).
ENGINE_CONSTRAINTS = {
    "engine": [None, StrOptions(["ray"])],
    "engine_options": [None, Rule(lambda v: isinstance(v, dict), "a dict of engine options")],
}


def _is_count(value, low):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def _is_amount(value, positive):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return value > 0 if positive else value >= 0


_OPTION_CHECKS = {
    "num_actors": lambda v: _is_count(v, 1),
    "batch_size": lambda v: _is_count(v, 1),
    "num_gpus": lambda v: _is_amount(v, False),
    "num_cpus": lambda v: _is_amount(v, True),
    "read_cpus": lambda v: _is_amount(v, True),
    "max_restarts": lambda v: _is_count(v, -1),
    "max_task_retries": lambda v: _is_count(v, -1),
    "address": lambda v: isinstance(v, str),
    "start_timeout": lambda v: _is_amount(v, True) and math.isfinite(v),
}


def require_ray():
    """Import Ray and Ray Data, or raise an ImportError with the install command."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"engine='ray' needs Ray with Ray Data, which is not installed: {INSTALL}"
        ) from exc
    return ray


def check_engine(engine, options) -> None:
    """Check ``engine_options`` against :data:`ENGINE_OPTIONS` and that Ray can be imported
    when ``engine="ray"`` (``engine`` itself is checked by the parameter constraints)."""
    options = options or {}
    unknown = sorted(set(options) - set(_OPTION_CHECKS), key=str)
    if unknown:
        raise ValueError(f"engine_options has unknown keys {unknown}; known: "
                         f"{sorted(ENGINE_OPTIONS)}")
    for key, value in options.items():
        if not _OPTION_CHECKS[key](value):
            raise ValueError(f"engine_options[{key!r}] must be the {ENGINE_OPTIONS[key]}, "
                             f"got {value!r}")
    if options and engine is None:
        raise ValueError("engine_options is set but engine is None; set engine='ray'")
    if engine == "ray":
        require_ray()


def connect(address=None):
    """Connect to Ray and return the ``ray`` module.

    Ray already initialised in this process (``ray.init`` called before) is used as it is.
    Otherwise a cluster is joined only when the user names one: ``address``
    (``engine_options["address"]``), else the ``RAY_ADDRESS`` environment variable (``"auto"``
    joins the cluster ``ray start`` made on this node). With neither, a private local instance
    is started (never a cluster that happens to run on the host), shut down at process exit.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    source = "engine_options['address']"
    if address is None and os.environ.get("RAY_ADDRESS"):
        address, source = os.environ["RAY_ADDRESS"], "the RAY_ADDRESS environment variable"
    if address is None:
        ray.init(address="local")
        atexit.register(ray.shutdown)
        return ray
    try:
        ray.init(address=address)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"engine='ray' cannot join the Ray cluster at {address!r} (from {source}): "
            f"{type(exc).__name__}: {exc}. Start that cluster or correct the address; or unset "
            "engine_options['address'] and RAY_ADDRESS to run on a private local Ray instance."
        ) from None
    return ray


def _fits(have, each):
    """How many of a request of ``each`` (> 0) ``have`` holds (a little slack for floats)."""
    return int(have / each + 1e-9)


def _refuse(key, value, problem, fix):
    raise ValueError(f"engine_options[{key!r}]={value!r}: {problem} (ray.cluster_resources()); "
                     f"{fix}")


def _check_actor(cluster, num_gpus, num_cpus, read_cpus, options):
    """One actor, and one reading task beside it, must fit the cluster."""
    gpus, cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
    if num_gpus > gpus:
        _refuse("num_gpus", num_gpus, f"one model actor asks for {num_gpus:g} GPU but the Ray "
                f"cluster has {gpus:g} GPU", "lower num_gpus (0 for CPU actors) or join a "
                "cluster with GPUs (engine_options['address'] or RAY_ADDRESS)")
    if read_cpus > cpus:
        _refuse("read_cpus", read_cpus, f"an image-reading task asks for {read_cpus:g} CPU but "
                f"the Ray cluster has {cpus:g} CPU", "lower read_cpus")
    if num_cpus + read_cpus > cpus:
        # name the option the user set (read_cpus only when num_cpus was left at its default)
        key, value = ("read_cpus", read_cpus) if "read_cpus" in options and "num_cpus" not in \
            options else ("num_cpus", num_cpus)
        problem = f"one model actor asks for {num_cpus:g} CPU"
        if read_cpus:
            problem += (f" and an image-reading task, which must run beside it, {read_cpus:g} "
                        "CPU")
        _refuse(key, value, f"{problem}, but the Ray cluster has {cpus:g} CPU",
                "lower num_cpus or read_cpus")


def plan_resources(options, *, device, batch_size, decode_size, ray):
    """Resolve the actor pool of ``engine_options`` against ``ray.cluster_resources()``.

    GPU actors (``num_gpus=1`` each) by default only where the cluster has GPUs and ``device``
    is not the CPU; by default one actor per GPU, else 2, never more than the cluster's CPUs
    hold beside one image-reading task (when ``decode_size`` is set, the reading tasks run).
    A request the cluster can never hold raises ``ValueError`` naming the option, before any
    pipeline starts (Ray would wait for it forever), and Ray Data's wait for the actors to
    start is bounded by ``engine_options["start_timeout"]``.

    Returns
    -------
    dict
        A copy of ``options`` with ``num_gpus``, ``num_cpus`` and ``num_actors`` set.
    """
    from ray.data import DataContext

    cluster = ray.cluster_resources()
    gpus, cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
    num_gpus = options.get("num_gpus", 1 if gpus >= 1 and str(device) != "cpu" else 0)
    num_cpus = options.get("num_cpus", 1)
    read_cpus = options.get("read_cpus", 1) if decode_size is not None else 0
    _check_actor(cluster, num_gpus, num_cpus, read_cpus, options)
    fits = {"CPU": _fits(cpus - read_cpus, num_cpus)}
    if num_gpus:
        fits["GPU"] = _fits(gpus, num_gpus)
    default = min(fits.values()) if num_gpus else min(2, fits["CPU"])
    num_actors = options.get("num_actors", default)
    short = [kind for kind, n in fits.items() if num_actors > n]
    if short:
        kind = short[0]
        each = f"{num_gpus if kind == 'GPU' else num_cpus:g} {kind} each"
        if kind == "CPU" and read_cpus:
            each += f", beside an image-reading task's {read_cpus:g} CPU,"
        _refuse("num_actors", num_actors, f"{num_actors} model actors of {each} do not fit the "
                f"Ray cluster's {cluster.get(kind, 0.0):g} {kind}",
                f"lower num_actors to at most {fits[kind]}")
    if decode_size is not None:
        _check_read_memory(cluster, options.get("batch_size", batch_size), decode_size)
    DataContext.get_current().wait_for_min_actors_s = options.get("start_timeout", START_TIMEOUT)
    return {**options, "num_gpus": num_gpus, "num_cpus": num_cpus, "num_actors": num_actors}


def _check_read_memory(cluster, batch_size, decode_size):
    need = _read_task_memory(batch_size, decode_size)
    memory = cluster.get("memory", math.inf)
    if need > memory:
        _refuse("batch_size", batch_size, f"an image-reading task of {batch_size} images at "
                f"{decode_size} px reserves {need / 2**30:.2f} GiB of memory but the Ray cluster "
                f"has {memory / 2**30:.2f} GiB", "lower batch_size (or the estimator's)")


def _read_task_memory(batch_size, decode_size):
    """Memory (bytes) one image-reading task reserves: its worker process with the package
    imported (:data:`READ_TASK_MEMORY`) and 4x its decoded batch."""
    return READ_TASK_MEMORY + 4 * batch_size * decode_size * decode_size * 3


def _start_timeout_error(options, ray):
    """The ``TimeoutError`` raised when the model actors did not start in time."""
    asked = f"{options['num_cpus']:g} CPU" + (f" and {options['num_gpus']:g} GPU"
                                               if options["num_gpus"] else "")
    free = {k: round(v, 2) for k, v in ray.available_resources().items()
            if k in ("CPU", "GPU", "memory")}
    return TimeoutError(
        f"engine='ray': the {options['num_actors']} model actor(s) did not start within "
        f"engine_options['start_timeout']={options.get('start_timeout', START_TIMEOUT):g} s. "
        f"Each asks for {asked}; free now on the Ray cluster: {free} (ray.available_resources())."
        " Free resources (other Ray work holds them), lower num_actors, num_gpus or num_cpus, or "
        "raise start_timeout (model downloads in the actors count too)."
    )


class _Shard:
    """A Ray Data actor: one copy of the estimator, its model loaded once; each batch of image
    positions is run through the estimator's in-process ``method``."""

    def __init__(self, payload):
        import ray

        self.estimator, self.X, self.method, self.columns, self.targets = ray.get(payload[0])
        self.estimator._load()  # the one model load of this actor
        self.actor = ray.get_runtime_context().get_actor_id() or "driver"

    def __call__(self, batch):
        idx = np.asarray(batch["data"], dtype=np.int64)
        start = time.perf_counter()
        if "pixels" in batch:  # decoded by a reading task; this actor holds no sources
            decoded = Subset([Decoded(p, tuple(int(v) for v in hw), str(key))
                              for p, hw, key in zip(batch["pixels"], batch["hw"], batch["key"])],
                             idx)
            X = self.X[idx].with_images(decoded) if isinstance(self.X, CropSet) else decoded
        else:
            X = self.X[idx] if isinstance(self.X, CropSet) else take(self.X, idx)
        out = self.columns(getattr(self.estimator, self.method)(X))
        for name, (filename, offset, dtype) in self.targets.items():
            if os.path.exists(filename):  # the driver's output file is seen here: write it
                write_file_rows(filename, offset, dtype, idx, out.pop(name))
        seconds = time.perf_counter() - start
        return {"id": idx, **out, "_actor": np.full(len(idx), self.actor),
                "_seconds": np.full(len(idx), seconds / max(1, len(idx)))}


def decode_size_of(estimator):
    """Where the reading tasks decode for an embedding estimator: at its ``image_size`` when
    crops are cut from the resized image; None (the actors read) for crops from the originals."""
    return estimator.image_size if estimator.crop_source == "resized" else None


def read_batch(batch, sources, size):
    """A Ray Data CPU task: read, decode and resize the images at a batch of positions.

    Returns the positions, the ``(size, size, 3)`` pixels, the original sizes and each image's
    cache key (:func:`sk_a2.cache.image_key` of the source: a file's digest, not the pixels'),
    so the actors' cache entries are those an in-process run over the same files uses.
    """
    import ray

    from .cache import image_key

    sources = ray.get(sources[0])
    idx = np.asarray(batch["data"], dtype=np.int64)
    pixels, hws, keys = [], [], []
    for i in idx:
        rgb, hw = load_resized(sources[i], size, index=int(i))
        pixels.append(rgb)
        hws.append(hw)
        keys.append(image_key(sources[i]))
    return {"data": idx, "pixels": np.stack(pixels), "hw": np.asarray(hws, dtype=np.int64),
            "key": np.asarray(keys)}


def array_columns(out):
    """The columns of a method returning one array: ``{"out": out}``."""
    return {"out": np.asarray(out)}


def _pool_args(options, batch_size, device, ray):
    """Map-batches arguments of the actor pool planned by :func:`plan_resources`."""
    # Ray Data restarts dead actors and retries their batches without limit by default; the
    # options bound that (passed only when given: Ray 2.60 deprecates passing remote args)
    retries = {key: options[key] for key in ("max_restarts", "max_task_retries") if key in options}
    return {
        **retries,
        "batch_size": options.get("batch_size", batch_size),
        "compute": ray.data.ActorPoolStrategy(size=options["num_actors"]),
        "num_gpus": options["num_gpus"],
        "num_cpus": options["num_cpus"],
    }


def run_sharded(estimator, method, X, *, columns=array_columns, outputs=None,
                worker_params=None, decode_size=None):
    """Run ``estimator.<method>`` over ``X`` on Ray actors; a dict of arrays in input order.

    ``X`` is image sources or a :class:`CropSet`. With ``decode_size``, CPU tasks read and decode
    the images and resize them to that size (:func:`read_batch`) and the actors receive the
    pixels; without it (crops cut from the original pixels), the actors read the images
    themselves. ``columns`` turns one batch's result into a
    dict of arrays with the batch's images as rows; ``outputs`` maps column names to arrays
    made beforehand (e.g. the memory-mapped ``.npy`` of :func:`sk_a2.outputs.open_output`,
    still under its partial name: the caller renames it once this returns; an actor that sees
    such a file writes its rows there itself, so they never pass through the driver's memory);
    other columns get ``np.empty`` arrays. The estimator is copied
    with ``engine=None``, ``verbose=False``, ``num_workers=0`` when the reading tasks decode, and
    ``worker_params`` for the actors; with
    ``verbose`` the driver reports each actor's throughput.
    """
    options = dict(estimator.engine_options or {})
    ray = connect(options.pop("address", None))
    options = plan_resources(options, device=estimator.device, batch_size=estimator.batch_size,
                             decode_size=decode_size, ray=ray)
    from ray.data import DataContext

    X = X if isinstance(X, CropSet) else as_sources(X)
    worker = copy.copy(estimator)
    # decoded pixels need no loader processes in the actors (they would start per batch)
    loaders = {} if decode_size is None else {"num_workers": 0}
    worker.set_params(engine=None, engine_options=None, verbose=False,
                      **{**loaders, **(worker_params or {})})
    outputs = dict(outputs or {})
    targets = {name: (arr.filename, arr.offset, arr.dtype) for name, arr in outputs.items()
               if isinstance(arr, np.memmap) and arr.filename}
    for arr in outputs.values():
        if isinstance(arr, np.memmap):
            arr.flush()  # the header is on disk before the actors open the file
    actor_X = X
    if decode_size is not None:  # the reading tasks get the sources, the actors only the boxes
        sources = [ray.put(X.images if isinstance(X, CropSet) else X)]
        actor_X = X.with_images([None] * len(X)) if isinstance(X, CropSet) else None
    payload = [ray.put((worker, actor_X, method, columns, targets))]
    DataContext.get_current().enable_progress_bars = bool(estimator.verbose)
    pool = _pool_args(options, estimator.batch_size, estimator.device, ray)
    # positions in blocks of one batch each, made on the driver (no Ray datasource to read), so
    # batches spread over the reading tasks and the actors
    blocks = np.array_split(np.arange(len(X)), max(1, -(-len(X) // pool["batch_size"])))
    ds = ray.data.from_numpy(blocks)
    if decode_size is not None:
        # a reading task reserves the memory it uses: its worker process with the package
        # imported (about 0.5 GiB) and 4x its decoded batch; this also keeps Ray Data from
        # fusing the tasks into the actors (their remote arguments differ), so decoding stays
        # on CPUs the actors do not hold
        memory = _read_task_memory(pool["batch_size"], decode_size)
        ds = ds.map_batches(read_batch, fn_kwargs={"sources": sources, "size": decode_size},
                            batch_format="numpy", batch_size=pool["batch_size"],
                            num_cpus=options.get("read_cpus", 1), memory=memory)
    ds = ds.map_batches(_Shard, fn_constructor_args=(payload,), batch_format="numpy", **pool)
    try:
        out, stats = _gather(ds, len(X), outputs)
    except ray.exceptions.GetTimeoutError:  # the actors did not start within start_timeout
        raise _start_timeout_error(options, ray) from None
    if estimator.verbose:
        report_throughput(stats)
    return out


def _gather(ds, n, outputs):
    """Write every batch's rows at their positions (into ``outputs`` where given, else new
    arrays); the outputs and per-actor (images, seconds)."""
    out, seen = outputs, np.zeros(n, dtype=bool)
    stats = defaultdict(lambda: [0, 0.0])
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        idx = batch.pop("id")
        for actor, seconds in zip(batch.pop("_actor"), batch.pop("_seconds")):
            stats[str(actor)][0] += 1
            stats[str(actor)][1] += float(seconds)
        for name, rows in batch.items():
            rows = np.asarray(rows)
            if name not in out:
                out[name] = np.empty((n, *rows.shape[1:]), rows.dtype)
            write_rows(out[name], idx, rows)
        seen[idx] = True
    if not seen.all():  # pragma: no cover - Ray Data returns every row or raises
        raise RuntimeError(f"the Ray pipeline returned {seen.sum()} of {n} images")
    return out, dict(stats)


def report_throughput(stats) -> None:
    """Print each actor's images, model-side seconds and images per second."""
    total = sum(images for images, _ in stats.values())
    print(f"[sk-a2] ray engine: {total} images on {len(stats)} actor(s)", flush=True)
    for actor, (images, seconds) in sorted(stats.items()):
        rate = images / seconds if seconds > 0 else float("inf")
        print(f"[sk-a2]   actor {actor[:12]}: {images} images in {seconds:.2f} s "
              f"({rate:.1f} images/s)", flush=True)
