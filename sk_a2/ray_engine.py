"""The Ray engine: an estimator's model work sharded over warm Ray actors.

``AttentionCropper``, ``CropEmbedder`` and ``ZeroShotCLIPClassifier`` take ``engine="ray"``
(and ``engine_options``, a dict). Their ``transform`` (the classifier's scores) then runs on an
**engine** (:mod:`sk_a2.ray_session`): long-lived model actors (``num_gpus=1`` each when the
cluster has GPUs and the estimator's device is not the CPU, else CPU actors) that load the model
once and run the estimator's public per-batch method, ``transform_batch`` (its in-process code,
at its ``precision``, with its ``cache``), and, where the cluster has CPUs to spare beside them,
reading actors that read, decode and resize each batch's images ahead of the model actors
(:func:`sk_a2.ray_session.read_batch`; with no CPU to spare, or with crops cut from the original
pixels, the model actors read the images themselves). The driver feeds the batches, a bounded
number in flight per actor, and writes every batch's rows at their positions, so the result is in
input order and equal to the in-process result.

An engine stays open for every later call of an estimator with the same model configuration (the
model and its weights, ``image_size``, ``device``, ``precision`` and the actor options) in this
driver process, so only the first call pays the actors' start-up; :func:`close_engines` (also run
at exit) closes them.

Ray is joined as :func:`connect` says: a cluster only when ``engine_options["address"]`` or
``RAY_ADDRESS`` names one, else a private local instance. :func:`plan_resources` sizes the
default actors from the resources the cluster has free and refuses, before anything starts, a
request it can never hold (a ``ValueError`` naming the option and the numbers). Every wait is
bounded: the actors' start by the ``start_timeout`` option, each batch by ``batch_timeout``;
past either, a ``TimeoutError`` names what was asked for and what is free.

Actors that die are restarted and their batches retried (bounded by the ``max_restarts`` and
``max_task_retries`` options). A disk ``cache`` on a path every node sees is filled by the
actors, so later in-process fits read it back without running a model. See ``docs/ray.md``.

This module imports Ray only when the engine runs; without Ray, asking for it raises an
ImportError that gives the install command.
"""

from __future__ import annotations

import atexit
import copy
import math
import numbers
import os
import threading
from collections import defaultdict

import numpy as np

from ._param_validation import Rule, StrOptions
from .cache import model_key
from .cropset import CropSet
from .images import as_sources, take
from .outputs import write_rows
from .ray_session import (Engine, close_engines, discard, held_resources, lookup, make_room,
                          read_batch, register)

__all__ = ["ENGINE_CONSTRAINTS", "ENGINE_OPTIONS", "check_engine", "close_engines", "connect",
           "engine_key", "plan_resources", "read_batch", "run", "run_sharded"]

INSTALL = 'pip install "sk-a2[ray]"'

#: Memory (bytes) the decoding of a batch needs besides its pixels: one worker process with the
#: package (and so torch) imported.
READ_TASK_MEMORY = 1 << 30

#: ``engine_options`` keys and what each accepts.
ENGINE_OPTIONS = {
    "num_actors": "number of model actors (int >= 1; default: one per free GPU, else 2; never "
                  "more than the cluster's free CPUs hold)",
    "num_readers": "number of image-reading actors (int >= 0, 0: the model actors read; default:"
                   " as many as the free CPUs beside the model actors hold, at most one per CPU "
                   "model actor or four per GPU model actor)",
    "batch_size": "images per Ray batch (int >= 1; default: the estimator's batch_size)",
    "num_gpus": "GPUs per actor (number >= 0; default: 1 when the cluster has GPUs and device "
                "is not 'cpu', else 0)",
    "num_cpus": "CPUs per model actor (number > 0; default: 1)",
    "max_restarts": "restarts of a dead actor (int >= -1, -1: unlimited; default: -1)",
    "max_task_retries": "retries of a dead actor's batch (int >= -1; default: -1)",
    "read_cpus": "CPUs per image-reading actor (number > 0; default: 1)",
    "address": 'Ray cluster to join (str, e.g. "auto", "10.0.0.5:6379", "ray://head:10001"; '
               'default: the RAY_ADDRESS environment variable, else a private local instance)',
    "start_timeout": "seconds to wait for the actors to start (number > 0; default: 600); past "
                     "it a TimeoutError names the resources asked for and free",
    "batch_timeout": "seconds to wait for the next batch's result (number > 0; default: 3600); "
                     "past it a TimeoutError names the batches waiting and the free resources",
}

#: Seconds the actors may take to start (``engine_options["start_timeout"]``).
START_TIMEOUT = 600
#: Seconds to wait for the next batch (``engine_options["batch_timeout"]``).
BATCH_TIMEOUT = 3600
#: ``engine_options`` keys that shape the actors (part of an engine's key).
ACTOR_KEYS = ("num_actors", "num_readers", "num_gpus", "num_cpus", "read_cpus", "max_restarts",
              "max_task_retries")

#: Held while an engine is looked up or started (calls from several threads start one engine).
_START_LOCK = threading.Lock()

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
    "num_readers": lambda v: _is_count(v, 0),
    "batch_size": lambda v: _is_count(v, 1),
    "num_gpus": lambda v: _is_amount(v, False),
    "num_cpus": lambda v: _is_amount(v, True),
    "read_cpus": lambda v: _is_amount(v, True),
    "max_restarts": lambda v: _is_count(v, -1),
    "max_task_retries": lambda v: _is_count(v, -1),
    "address": lambda v: isinstance(v, str),
    "start_timeout": lambda v: _is_amount(v, True) and math.isfinite(v),
    "batch_timeout": lambda v: _is_amount(v, True) and math.isfinite(v),
}


def require_ray():
    """Import Ray, or raise an ImportError with the install command."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            f"engine='ray' needs Ray, which is not installed: {INSTALL}"
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
    return max(0, int(have / each + 1e-9))


def _refuse(key, value, problem, fix):
    raise ValueError(f"engine_options[{key!r}]={value!r}: {problem} (ray.cluster_resources()); "
                     f"{fix}")


def _check_actor(cluster, num_gpus, num_cpus, read_cpus, reads):
    """One model actor, and one reading actor where images are decoded, fit the cluster."""
    gpus, cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
    if num_gpus > gpus:
        _refuse("num_gpus", num_gpus, f"one model actor asks for {num_gpus:g} GPU but the Ray "
                f"cluster has {gpus:g} GPU", "lower num_gpus (0 for CPU actors) or join a "
                "cluster with GPUs (engine_options['address'] or RAY_ADDRESS)")
    if num_cpus > cpus:
        _refuse("num_cpus", num_cpus, f"one model actor asks for {num_cpus:g} CPU but the Ray "
                f"cluster has {cpus:g} CPU", "lower num_cpus")
    if reads and read_cpus > cpus:
        _refuse("read_cpus", read_cpus, f"an image-reading actor asks for {read_cpus:g} CPU but "
                f"the Ray cluster has {cpus:g} CPU", "lower read_cpus")


def _default_pool(free, num_gpus, num_cpus, read_cpus, reads):
    """Default model actors and reading actors for the resources ``free`` now: one model actor
    per free GPU (GPU actors) or 2 (CPU actors), as many as the free CPUs hold (at least one),
    then reading actors on the CPUs left (none: the model actors read)."""
    cpus = free.get("CPU", 0.0)
    actors = _fits(cpus, num_cpus)
    actors = min(actors, _fits(free.get("GPU", 0.0), num_gpus)) if num_gpus else min(2, actors)
    actors = max(1, actors)
    per_actor = 4 if num_gpus else 1
    readers = min(per_actor * actors, _fits(cpus - actors * num_cpus, read_cpus)) if reads else 0
    return actors, readers


def _check_pool(cluster, plan, options):
    """The whole pool (model actors and reading actors) fits the cluster."""
    gpus, cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
    actors, readers = plan["num_actors"], plan["num_readers"]
    if plan["num_gpus"] and actors * plan["num_gpus"] > gpus + 1e-9:
        _refuse("num_actors", actors, f"{actors} model actors of {plan['num_gpus']:g} GPU each "
                f"need {actors * plan['num_gpus']:g} GPU but the Ray cluster has {gpus:g} GPU",
                f"lower num_actors to at most {_fits(gpus, plan['num_gpus'])}")
    need = actors * plan["num_cpus"] + readers * plan["read_cpus"]
    if need > cpus + 1e-9:
        key = next((k for k in ("num_readers", "num_actors", "num_cpus", "read_cpus")
                    if k in options), "num_actors")
        what = f"{actors} model actors of {plan['num_cpus']:g} CPU each"
        if readers:
            what += f" and {readers} image-reading actors of {plan['read_cpus']:g} CPU each"
        _refuse(key, options.get(key, plan[key]), f"{what} need {need:g} CPU but the Ray "
                f"cluster has {cpus:g} CPU", "lower num_actors, num_readers, num_cpus or "
                "read_cpus (num_readers=0: the model actors read the images)")


def plan_resources(options, *, device, batch_size, decode_size, ray, held=None):
    """Resolve the actors of ``engine_options`` against the Ray cluster's resources.

    GPU actors (``num_gpus=1`` each) by default only where the cluster has GPUs and ``device``
    is not the CPU. Default sizes come from what is free now (``ray.available_resources()``,
    plus ``held``: what this process's open engines hold and would give up): one model actor
    per free GPU, else 2 CPU actors, as many as the free CPUs hold; then reading actors on the
    CPUs left, where images are decoded (``decode_size`` set); with none left, the model actors
    read. A request the cluster can never hold (``ray.cluster_resources()``) raises
    ``ValueError`` naming the option and the numbers, before any actor starts.

    Returns
    -------
    dict
        A copy of ``options`` with every actor option, ``decode_size`` (None without reading
        actors), ``start_timeout`` and ``batch_timeout`` set.
    """
    cluster = ray.cluster_resources()
    free = dict(ray.available_resources())
    for kind, amount in (held or {}).items():
        free[kind] = free.get(kind, 0.0) + amount
    free = {kind: min(free.get(kind, 0.0), cluster.get(kind, 0.0)) for kind in ("CPU", "GPU")}
    reads = decode_size is not None
    num_gpus = options.get("num_gpus", 1 if cluster.get("GPU", 0.0) >= 1 and str(device) != "cpu"
                           else 0)
    num_cpus, read_cpus = options.get("num_cpus", 1), options.get("read_cpus", 1)
    _check_actor(cluster, num_gpus, num_cpus, read_cpus, reads and "read_cpus" in options)
    actors, readers = _default_pool(free, num_gpus, num_cpus, read_cpus, reads)
    plan = {**options, "num_gpus": num_gpus, "num_cpus": num_cpus, "read_cpus": read_cpus,
            "num_actors": options.get("num_actors", actors),
            "num_readers": options.get("num_readers", readers) if reads else 0,
            "max_restarts": options.get("max_restarts", -1),
            "max_task_retries": options.get("max_task_retries", -1),
            "start_timeout": options.get("start_timeout", START_TIMEOUT),
            "batch_timeout": options.get("batch_timeout", BATCH_TIMEOUT)}
    _check_pool(cluster, plan, options)
    if reads:
        _check_read_memory(cluster, options.get("batch_size", batch_size), decode_size)
    plan["decode_size"] = decode_size if plan["num_readers"] else None
    return plan


def _check_read_memory(cluster, batch_size, decode_size):
    need = _read_task_memory(batch_size, decode_size)
    memory = cluster.get("memory", math.inf)
    if need > memory:
        _refuse("batch_size", batch_size, f"decoding a batch of {batch_size} images at "
                f"{decode_size} px needs {need / 2**30:.2f} GiB of memory but the Ray cluster "
                f"has {memory / 2**30:.2f} GiB", "lower batch_size (or the estimator's)")


def _read_task_memory(batch_size, decode_size):
    """Memory (bytes) decoding one batch needs: a worker process with the package imported
    (:data:`READ_TASK_MEMORY`) and 4x its decoded batch."""
    return READ_TASK_MEMORY + 4 * batch_size * decode_size * decode_size * 3


def _free_now(ray):
    """What the Ray cluster has free now, e.g. ``"0 CPU, 0 GPU, 14.61 GiB memory"``."""
    free = ray.available_resources()
    return (f"{free.get('CPU', 0.0):g} CPU, {free.get('GPU', 0.0):g} GPU, "
            f"{free.get('memory', 0.0) / 2**30:.2f} GiB memory")


def _start_timeout_error(plan, ray):
    """The ``TimeoutError`` raised when the actors did not start in time."""
    asked = f"{plan['num_cpus']:g} CPU" + (f" and {plan['num_gpus']:g} GPU"
                                            if plan["num_gpus"] else "")
    readers = (f", and {plan['num_readers']} image-reading actor(s) {plan['read_cpus']:g} CPU "
               "each" if plan["num_readers"] else "")
    return TimeoutError(
        f"engine='ray': the {plan['num_actors']} model actor(s) did not start within "
        f"engine_options['start_timeout']={plan['start_timeout']:g} s. Each asks for "
        f"{asked}{readers}; free now on the Ray cluster: {_free_now(ray)} "
        "(ray.available_resources()). Free resources (other Ray work holds them), lower "
        "num_actors, num_readers, num_gpus or num_cpus, or raise start_timeout."
    )


def _stall_error(plan, ray, waiting, timeout):
    return TimeoutError(
        f"engine='ray': no batch finished within engine_options['batch_timeout']="
        f"{timeout:g} s ({waiting} batch(es) queued on {plan['num_actors']} model "
        f"actor(s)); free now on the Ray cluster: {_free_now(ray)} (ray.available_resources()). "
        "Lower batch_size, or raise batch_timeout for slow models."
    )


def engine_key(params, options, decode_size):
    """What an engine is shared by: the model (its name and weights' content, or a module's
    weights and layer types), ``image_size``, ``device``, ``precision``, where images are decoded
    and the actor options."""
    model = params["model"]
    ident = model_key(model, params["weights"])
    if not isinstance(model, str):
        ident = (ident, tuple(f"{type(m).__module__}.{type(m).__qualname__}"
                              for m in model.modules()))
    actors = tuple(sorted((k, options[k]) for k in ACTOR_KEYS if k in options))
    return (ident, params["image_size"], str(params["device"]), params["precision"],
            decode_size, actors)


def _engine(params, options, decode_size, ray):
    """The open engine for this configuration, or a new one whose actors have started."""
    key = engine_key(params, options, decode_size)
    engine = lookup(key, ray)
    if engine is not None:
        return engine
    plan = plan_resources(options, device=params["device"], batch_size=params["batch_size"],
                          decode_size=decode_size, ray=ray, held=held_resources())
    need = {"CPU": plan["num_actors"] * plan["num_cpus"] + plan["num_readers"] * plan["read_cpus"],
            "GPU": plan["num_actors"] * plan["num_gpus"]}
    make_room(need, ray.available_resources())
    module = None if isinstance(params["model"], str) else params["model"]
    engine = Engine(key, plan, module, ray)
    try:
        started = engine.wait_ready(plan["start_timeout"])
    except BaseException:
        engine.close()
        raise
    if not started:
        error = _start_timeout_error(plan, ray)
        engine.close()
        raise error
    register(engine)
    return engine


def _parts(X, batch_size, readers):
    """Consecutive batches of ``X``: ``((positions, inputs), sources)``. With reading actors the
    sources go to them and the inputs hold no images (a CropSet's boxes, or None); without, the
    inputs are the sources themselves (or a CropSet of them)."""
    images = X.images if isinstance(X, CropSet) else X
    for start in range(0, len(X), batch_size):
        idx = np.arange(start, min(len(X), start + batch_size), dtype=np.int64)
        sources = take(images, idx)
        if readers:
            inputs = X[idx].with_images([None] * len(idx)) if isinstance(X, CropSet) else None
            yield (idx, inputs), sources
        else:
            yield (idx, X[idx].with_images(sources) if isinstance(X, CropSet) else sources), None


def array_columns(out):
    """The columns of a method returning one array: ``{"out": out}``."""
    return {"out": np.asarray(out)}


def _payload(estimator, params, worker_params, outputs):
    """What each model actor gets once per call: the estimator with the in-process engine (no
    loader processes, no module: the actor holds it), and the output files it may write."""
    worker = copy.copy(estimator)
    module = {} if isinstance(params["model"], str) else {"model": None}
    worker.set_params(engine=None, engine_options=None, verbose=False, num_workers=0,
                      **module, **(worker_params or {}))
    targets = {name: (arr.filename, arr.offset, arr.dtype) for name, arr in outputs.items()
               if isinstance(arr, np.memmap) and arr.filename}
    for arr in outputs.values():
        if isinstance(arr, np.memmap):
            arr.flush()  # the header is on disk before the actors open the file
    return worker, targets


def run(estimator, X, *, in_process, **sharded_options):
    """Run an estimator's model work over ``X`` on the engine its ``engine`` parameter names:
    the one place that chooses between this process and Ray.

    ``in_process(X)`` (``engine=None``) returns what :func:`run_sharded` returns for
    ``engine="ray"``, which gets ``sharded_options``: a dict of arrays with the images as rows.
    """
    if estimator.engine == "ray":
        return run_sharded(estimator, X, **sharded_options)
    return in_process(X)


def run_sharded(estimator, X, *, columns=array_columns, outputs=None, worker_params=None,
                decode_size=None):
    """Run ``estimator.transform_batch`` over ``X`` on the Ray engine; a dict of arrays in input
    order.

    ``X`` is image sources or a :class:`CropSet`. ``decode_size``: the size the images may be
    decoded and resized to ahead of the model (by reading actors, when the cluster has CPUs for
    them); None when ``transform_batch`` needs the original pixels (the model actors read).
    ``columns`` turns one batch's result into a dict of arrays with the batch's images as rows;
    ``outputs`` maps column names to arrays made beforehand (e.g. the memory-mapped ``.npy`` of
    :func:`sk_a2.outputs.open_output`: an actor that sees such a file writes its rows there
    itself, so they never pass through the driver's memory); other columns get ``np.empty``
    arrays. The actors run a copy of the estimator with ``engine=None``, ``verbose=False``,
    ``num_workers=0`` and ``worker_params``; with ``verbose`` the driver reports each actor's
    throughput.
    """
    X = X if isinstance(X, CropSet) else as_sources(X)
    if len(X) == 0:  # nothing for the actors: the empty result, in this process
        return {**columns(estimator.transform_batch(X)), **(outputs or {})}
    params = estimator.get_params(deep=False)
    options = dict(params["engine_options"] or {})
    ray = connect(options.pop("address", None))
    with _START_LOCK:
        engine = _engine(params, options, decode_size, ray)
    outputs = dict(outputs or {})
    worker, targets = _payload(estimator, params, worker_params, outputs)
    out, seen, stats = outputs, np.zeros(len(X), dtype=bool), defaultdict(lambda: [0, 0.0])

    def gather(result):
        idx = result.pop("id")
        entry = stats[result.pop("_pid")]
        entry[0] += len(idx)
        entry[1] += result.pop("_seconds")
        for name, rows in result.items():
            rows = np.asarray(rows)
            if name not in out:
                out[name] = np.empty((len(X), *rows.shape[1:]), rows.dtype)
            write_rows(out[name], idx, rows)
        seen[idx] = True

    parts = _parts(X, options.get("batch_size", params["batch_size"]), engine.readers)
    _run(engine, (worker, columns, targets), parts, gather, ray,
         options.get("batch_timeout", BATCH_TIMEOUT))
    if not seen.all():  # pragma: no cover - every batch returns its rows or raises
        raise RuntimeError(f"the Ray engine returned {seen.sum()} of {len(X)} images")
    if params["verbose"]:
        report_throughput(dict(stats))
    return out


def _run(engine, payload, parts, gather, ray, timeout):
    """Run the batches on ``engine``, ``timeout`` seconds at most for each next result; a
    batch's own error (e.g. an unreadable ``X[i]``) is raised as itself, and an engine whose
    actors failed or stalled is closed (the next call starts a new one)."""
    try:
        engine.run(payload, parts, gather, timeout,
                   lambda waiting: _stall_error(engine.plan, ray, waiting, timeout))
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
            raise cause from None
        discard(engine)
        raise
    except BaseException:
        discard(engine)
        raise


def report_throughput(stats) -> None:
    """Print each actor's images, model-side seconds and images per second."""
    total = sum(images for images, _ in stats.values())
    print(f"[sk-a2] ray engine: {total} images on {len(stats)} actor(s)", flush=True)
    for actor, (images, seconds) in sorted(stats.items()):
        rate = images / seconds if seconds > 0 else float("inf")
        print(f"[sk-a2]   actor process {actor}: {images} images in {seconds:.2f} s "
              f"({rate:.1f} images/s)", flush=True)
