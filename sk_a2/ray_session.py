"""Warm Ray engines: model actors that outlive the call that started them.

An engine is a set of long-lived Ray actors for one model configuration (the model and its
weights, ``image_size``, ``device``, ``precision`` and the actor options): **model actors**
(:class:`ModelActor`), each deserialising a module passed in once and loading a named model
once, and, where the cluster has CPUs to spare, **reading actors** (:class:`ReadActor`) that
decode the images of a batch ahead of the model actors. Every call of an estimator with the same
configuration in this driver process (``fit`` → ``transform`` → ``predict``, each candidate of a
``GridSearchCV``) reuses them, so only the first call pays the start-up (a process per actor,
the imports, the model load). The driver feeds the batches itself, at most
:data:`IN_FLIGHT` per model actor at a time, and gathers the rows in input order.

Engines are closed by :func:`close_engines` (also run at interpreter exit); an engine whose
actors do not fit beside a new one is closed first, least recently used first. Ray itself is
imported only when an engine runs.
"""

from __future__ import annotations

import atexit
import os
import time
import uuid
from collections import OrderedDict

import numpy as np

from .images import Decoded, Subset, load_resized, position
from .outputs import write_file_rows

__all__ = ["IN_FLIGHT", "Engine", "ModelActor", "ReadActor", "close_engines", "discard",
           "held_resources",
           "lookup", "make_room", "open_engines", "read_batch", "register"]

#: Batches queued on each model actor at a time (one running, one waiting: the next batch's
#: transfer and decoding overlap the current batch's forwards).
IN_FLIGHT = 2

#: Open engines of this driver process, least recently used first.
_ENGINES: OrderedDict = OrderedDict()
_EXIT_HOOK = []


def read_batch(sources, size):
    """Read, decode and resize a batch of images (what a reading actor runs).

    ``sources`` is a :class:`~sk_a2.images.Subset` of ``X`` (errors name ``X[i]``). Returns the
    ``(size, size, 3)`` pixels, the original sizes and each image's cache key
    (:func:`sk_a2.cache.image_key` of the source: a file's digest, not the pixels'), so the model
    actors' cache entries are those an in-process run over the same sources uses.
    """
    from .cache import image_key

    pixels, hws, keys = [], [], []
    for i in range(len(sources)):
        rgb, hw = load_resized(sources[i], size, index=position(sources, i))
        pixels.append(rgb)
        hws.append(hw)
        keys.append(image_key(sources[i]))
    return {"pixels": np.stack(pixels), "hw": np.asarray(hws, dtype=np.int64),
            "key": np.asarray(keys)}


class ReadActor:
    """A Ray actor that reads and decodes batches of images (:func:`read_batch`)."""

    def ready(self):
        return os.getpid()

    def read(self, sources, size):
        return read_batch(sources, size)


class ModelActor:
    """A Ray actor running an estimator's public per-batch method, ``transform_batch``.

    ``module`` is the model passed to the estimators as a ``torch.nn.Module`` (deserialised here
    once, for every call of the engine), or None for a named model (loaded by the estimator's
    first batch and kept by the process's model cache). Each call's estimator (a copy without
    the module) is fetched once per actor and call.
    """

    def __init__(self, module_ref):
        import ray

        # the module (a reference in a list: Ray hands it over as is, fetched here once)
        self.module = None if module_ref is None else ray.get(module_ref[0])
        self.call_id, self.call = None, None

    def ready(self):
        return os.getpid()

    def _call(self, call_id, call_ref):
        if call_id != self.call_id:
            import ray

            worker, columns, targets = ray.get(call_ref[0])
            if self.module is not None:
                worker.set_params(model=self.module)
            self.call_id, self.call = call_id, (worker, columns, targets)
        return self.call

    def run(self, call_id, call_ref, part, decoded):
        """One batch: ``part`` is (positions, inputs); ``decoded`` the reading actor's output
        for these positions, or None when ``inputs`` holds the sources themselves."""
        worker, columns, targets = self._call(call_id, call_ref)
        idx, X = part
        start = time.perf_counter()
        if decoded is not None:
            images = Subset([Decoded(p, tuple(int(v) for v in hw), str(key)) for p, hw, key
                             in zip(decoded["pixels"], decoded["hw"], decoded["key"])], idx)
            X = images if X is None else X.with_images(images)
        out = columns(worker.transform_batch(X))
        for name, (filename, offset, dtype) in targets.items():
            if os.path.exists(filename):  # the driver's output file is seen here: write it
                write_file_rows(filename, offset, dtype, idx, out.pop(name))
        return {"id": idx, **out, "_seconds": time.perf_counter() - start, "_pid": os.getpid()}


def _session(ray):
    """The Ray instance this process is connected to (engines of an earlier one are stale);
    None when it is connected to none (Ray shut down, or never started in this process)."""
    try:
        ctx = ray.get_runtime_context()
        return (ctx.gcs_address, ctx.get_job_id())
    except Exception:  # Ray's own error type for "not started" varies across its versions
        return None


class Engine:
    """The actors of one model configuration and what they hold (``plan``: the resolved
    ``engine_options``, see :func:`sk_a2.ray_engine.plan_resources`)."""

    def __init__(self, key, plan, module, ray):
        self.key, self.plan, self.ray, self.session = key, plan, ray, _session(ray)
        restarts = {"max_restarts": plan["max_restarts"],
                    "max_task_retries": plan["max_task_retries"]}
        model = ray.remote(num_cpus=plan["num_cpus"], num_gpus=plan["num_gpus"],
                           **restarts)(ModelActor)
        reader = ray.remote(num_cpus=plan["read_cpus"], **restarts)(ReadActor)
        # kept by the engine while it is open: a restarted actor fetches the module again
        self.module_ref = None if module is None else [ray.put(module)]
        self.actors = [model.remote(self.module_ref) for _ in range(plan["num_actors"])]
        self.readers = [reader.remote() for _ in range(plan["num_readers"])]

    def holds(self):
        """The resources (``{"CPU": .., "GPU": ..}``) this engine's actors hold."""
        p = self.plan
        return {"CPU": p["num_actors"] * p["num_cpus"] + p["num_readers"] * p["read_cpus"],
                "GPU": p["num_actors"] * p["num_gpus"]}

    def wait_ready(self, timeout):
        """Wait up to ``timeout`` seconds for every actor to start; False if some did not."""
        refs = [a.ready.remote() for a in self.actors + self.readers]
        done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        self.ray.get(done)  # an actor that failed to start raises its error here
        return len(done) == len(refs)

    def close(self):
        if self.ray.is_initialized() and _session(self.ray) == self.session:
            for actor in self.actors + self.readers:
                self.ray.kill(actor, no_restart=True)
        self.actors, self.readers, self.module_ref = [], [], None

    def submit(self, a, call, part, sources, size, turn):
        """Queue one batch on model actor ``a`` (read first by a reading actor when there are
        any: the pixels go from it to the model actor without passing through the driver)."""
        decoded = None
        if self.readers:
            decoded = self.readers[turn % len(self.readers)].read.remote(sources, size)
        return self.actors[a].run.remote(call[0], call[1], part, decoded)

    def run(self, payload, parts, gather, timeout, on_stall):
        """Run every ``(part, sources)`` of ``parts`` on the model actors, at most
        :data:`IN_FLIGHT` each, passing each result to ``gather`` as it arrives. With no
        result for ``timeout`` seconds, ``on_stall(batches waiting)`` gives the error raised."""
        ray = self.ray
        call = (uuid.uuid4().hex, [ray.put(payload)])
        parts, pending, turn = iter(parts), {}, 0
        for _ in range(IN_FLIGHT):
            for a in range(len(self.actors)):
                item = next(parts, None)
                if item is not None:
                    pending[self.submit(a, call, *item, self.plan["decode_size"], turn)] = a
                    turn += 1
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
            if not done:
                raise on_stall(len(pending))
            a = pending.pop(done[0])
            gather(ray.get(done[0]))
            item = next(parts, None)
            if item is not None:
                pending[self.submit(a, call, *item, self.plan["decode_size"], turn)] = a
                turn += 1


def open_engines():
    """The open engines of this driver process (least recently used first)."""
    return list(_ENGINES.values())


def lookup(key, ray):
    """The open engine of ``key`` on the Ray instance now connected, or None. Engines left from
    an earlier Ray instance (``ray.shutdown`` ended their actors) are forgotten."""
    session = _session(ray)
    for k in [k for k, e in _ENGINES.items() if e.session != session]:
        del _ENGINES[k]
    engine = _ENGINES.get(key)
    if engine is not None:
        _ENGINES.move_to_end(key)
    return engine


def held_resources():
    """CPUs and GPUs held by the open engines (free once they are closed)."""
    total = {"CPU": 0.0, "GPU": 0.0}
    for engine in _ENGINES.values():
        for kind, amount in engine.holds().items():
            total[kind] += amount
    return total


def make_room(need, available):
    """Close open engines, least recently used first, until ``need`` (CPU, GPU) fits what is
    ``available`` now plus what the closed engines held."""
    free = {kind: available.get(kind, 0.0) for kind in need}
    for key in list(_ENGINES):
        if all(free[kind] + 1e-9 >= need[kind] for kind in need):
            return
        engine = _ENGINES.pop(key)
        for kind, amount in engine.holds().items():
            free[kind] = free.get(kind, 0.0) + amount
        engine.close()


def discard(engine):
    """Close ``engine`` and forget it (its actors failed: the next call starts a new one)."""
    if _ENGINES.get(engine.key) is engine:
        del _ENGINES[engine.key]
    engine.close()


def register(engine):
    """Keep ``engine`` open for later calls; closed by :func:`close_engines` or at exit."""
    _ENGINES[engine.key] = engine
    if not _EXIT_HOOK:
        atexit.register(close_engines)
        _EXIT_HOOK.append(True)


def close_engines():
    """Close every warm Ray engine of this process: end its model and reading actors and free
    their CPUs, GPUs and memory. The next ``engine="ray"`` call starts a new engine.

    Returns
    -------
    int
        The number of engines closed.
    """
    engines = list(_ENGINES.values())
    _ENGINES.clear()
    for engine in engines:
        engine.close()
    return len(engines)
