"""The Ray engine's connection and resource plan: which cluster it joins, and a clear error
(never a silent wait) when the cluster cannot hold the actors it asks for.

Ray itself is replaced by recorders here (``ray.init``, ``ray.cluster_resources``, the engine's
actors), so no cluster starts; the tests at the end share one private local instance with 2 CPUs.
"""

import atexit
import os
import time

import numpy as np
import pytest
import torch
from conftest import blob_images, make_timm

import sk_a2.ray_engine
from sk_a2 import AttentionCropper, CropEmbedder
from sk_a2.ray_engine import check_engine, close_engines, connect
from sk_a2.ray_session import open_engines

ray = pytest.importorskip("ray")

GiB = 1 << 30


def plan_resources(options, **kw):
    return sk_a2.ray_engine.plan_resources(options, **kw)


@pytest.fixture
def fake_init(monkeypatch):
    """``ray.init`` recorded, never run; Ray not initialised; exit hooks recorded."""
    calls = {"init": [], "atexit": []}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls["init"].append(kw))
    monkeypatch.setattr(atexit, "register", lambda fn, *a, **kw: calls["atexit"].append(fn))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


# --------------------------------------------------------------------------------------------
# Which cluster: a private local instance unless the user names one
# --------------------------------------------------------------------------------------------

CONNECTIONS = {
    # name: (RAY_ADDRESS, engine_options["address"], address passed to ray.init)
    "nothing-set-starts-a-private-local-instance": (None, None, "local"),
    "empty-RAY_ADDRESS-is-unset": ("", None, "local"),
    "RAY_ADDRESS-joins-that-cluster": ("10.0.0.5:6379", None, "10.0.0.5:6379"),
    "address-option-joins-that-cluster": (None, "ray://head:10001", "ray://head:10001"),
    "address-option-wins-over-RAY_ADDRESS": ("10.0.0.5:6379", "10.0.0.9:6379", "10.0.0.9:6379"),
    "address-auto-joins-the-running-cluster": (None, "auto", "auto"),
}


@pytest.mark.parametrize("env, option, expected", CONNECTIONS.values(), ids=CONNECTIONS)
def test_connect_joins_a_cluster_only_when_asked(fake_init, monkeypatch, env, option, expected):
    if env is not None:
        monkeypatch.setenv("RAY_ADDRESS", env)
    assert connect(option) is ray
    assert [kw["address"] for kw in fake_init["init"]] == [expected]
    # the private instance is shut down at exit; a joined cluster is left running
    assert (ray.shutdown in fake_init["atexit"]) == (expected == "local")


def test_connect_reuses_ray_initialised_in_this_process(fake_init, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert connect("10.0.0.9:6379") is ray
    assert fake_init["init"] == []


@pytest.mark.parametrize("env, option, source", [
    (None, "10.0.0.9:6379", "engine_options['address']"),
    ("10.0.0.9:6379", None, "RAY_ADDRESS"),
], ids=["address-option", "RAY_ADDRESS"])
def test_unreachable_cluster_names_where_its_address_came_from(fake_init, monkeypatch, env,
                                                               option, source):
    def refuse(**kw):
        raise ConnectionError("Could not find any running Ray instance")

    monkeypatch.setattr(ray, "init", refuse)
    if env is not None:
        monkeypatch.setenv("RAY_ADDRESS", env)
    with pytest.raises(ValueError) as info:
        connect(option)
    message = str(info.value)
    assert "'10.0.0.9:6379'" in message and source in message
    assert "Could not find any running Ray instance" in message and "unset" in message


# --------------------------------------------------------------------------------------------
# What the cluster must hold: checked before anything is launched
# --------------------------------------------------------------------------------------------


class _Cluster:
    """The part of the ``ray`` module the resource plan reads: the cluster's resources and what
    is free now (all of them unless given)."""

    def __init__(self, resources, available=None):
        self.resources = resources
        self.available = resources if available is None else available

    def cluster_resources(self):
        return dict(self.resources)

    def available_resources(self):
        return dict(self.available)


CPU2 = {"CPU": 2.0, "memory": 8 * GiB}

TOO_BIG = {
    # name: (cluster resources, engine_options, device, the option the error names, words)
    "gpus-asked-cluster-has-none": (
        CPU2, {"num_gpus": 1}, "cpu", "num_gpus", "0 GPU"),
    "more-gpus-per-actor-than-the-cluster": (
        {"CPU": 8.0, "GPU": 1.0, "memory": 8 * GiB}, {"num_gpus": 2}, "auto", "num_gpus",
        "1 GPU"),
    "more-cpus-per-actor-than-the-cluster": (
        CPU2, {"num_cpus": 4}, "cpu", "num_cpus", "asks for 4 CPU but the Ray cluster has 2 CPU"),
    "actor-and-reading-actor-do-not-fit-together": (
        CPU2, {"num_cpus": 2, "num_readers": 1}, "cpu", "num_readers",
        "1 image-reading actors of 1 CPU each need 3 CPU but the Ray cluster has 2 CPU"),
    "reading-actor-needs-more-cpus-than-the-cluster": (
        CPU2, {"read_cpus": 3}, "cpu", "read_cpus", "asks for 3 CPU but the Ray cluster has 2"),
    "pool-larger-than-the-cluster": (
        CPU2, {"num_actors": 3}, "cpu", "num_actors", "need 3 CPU but the Ray cluster has 2 CPU"),
    "gpu-pool-larger-than-the-cluster": (
        {"CPU": 16.0, "GPU": 2.0, "memory": 8 * GiB}, {"num_actors": 3, "num_gpus": 1}, "auto",
        "num_actors", "need 3 GPU but the Ray cluster has 2 GPU"),
    "reading-memory-past-the-cluster": (
        {"CPU": 4.0, "memory": 1.05 * GiB}, {"batch_size": 2048}, "cpu", "batch_size", "memory"),
}


@pytest.mark.parametrize("resources, options, device, key, words", TOO_BIG.values(), ids=TOO_BIG)
def test_request_the_cluster_cannot_hold_is_refused(resources, options, device, key, words):
    with pytest.raises(ValueError) as info:
        plan_resources(options, device=device, batch_size=8, decode_size=64,
                       ray=_Cluster(resources))
    message = str(info.value)
    assert f"engine_options[{key!r}]" in message and words in message, message


PLANS = {
    # name: (cluster resources, free now, held by this process's engines, engine_options,
    #        device, images decoded?, model actors, reading actors, GPUs each)
    "two-cpus-two-actors-that-read-themselves": (CPU2, None, None, {}, "cpu", True, 2, 0, 0),
    "two-cpus-two-actors-when-nothing-reads": (CPU2, None, None, {}, "cpu", False, 2, 0, 0),
    "three-cpus-two-actors-and-a-reading-actor": (
        {"CPU": 3.0, "memory": 8 * GiB}, None, None, {}, "cpu", True, 2, 1, 0),
    "one-cpu-one-actor": ({"CPU": 1.0, "memory": 8 * GiB}, None, None, {}, "cpu", True, 1, 0, 0),
    "busy-cluster-sized-from-what-is-free": (
        {"CPU": 8.0, "memory": 8 * GiB}, {"CPU": 1.0}, None, {}, "cpu", True, 1, 0, 0),
    "nothing-free-still-one-actor-that-waits": (
        {"CPU": 8.0, "memory": 8 * GiB}, {"CPU": 0.0}, None, {}, "cpu", True, 1, 0, 0),
    "own-engines-count-as-free": (
        {"CPU": 3.0, "memory": 8 * GiB}, {"CPU": 0.0}, {"CPU": 3.0}, {}, "cpu", True, 2, 1, 0),
    "one-actor-per-gpu-four-readers-each": (
        {"CPU": 32.0, "GPU": 4.0, "memory": 8 * GiB}, None, None, {}, "auto", True, 4, 16, 1),
    "readers-bounded-by-the-cpus-left": (
        {"CPU": 16.0, "GPU": 4.0, "memory": 8 * GiB}, None, None, {}, "auto", True, 4, 12, 1),
    "gpu-actors-bounded-by-cpus": (
        {"CPU": 3.0, "GPU": 4.0, "memory": 8 * GiB}, None, None, {}, "auto", True, 3, 0, 1),
    "half-gpu-actors": ({"CPU": 16.0, "GPU": 1.0, "memory": 8 * GiB}, None, None,
                        {"num_gpus": 0.5}, "auto", True, 2, 8, 0.5),
    "cpu-device-never-asks-for-gpus": ({"CPU": 16.0, "GPU": 4.0, "memory": 8 * GiB}, None, None,
                                       {}, "cpu", True, 2, 2, 0),
    "explicit-pool-that-fits": (CPU2, None, None, {"num_actors": 1, "num_readers": 1}, "cpu",
                                True, 1, 1, 0),
    "no-readers-asked": ({"CPU": 8.0, "memory": 8 * GiB}, None, None, {"num_readers": 0}, "cpu",
                         True, 2, 0, 0),
}


@pytest.mark.parametrize("resources, free, held, options, device, reads, actors, readers, gpus",
                         PLANS.values(), ids=PLANS)
def test_default_pool_fits_the_cluster(resources, free, held, options, device, reads, actors,
                                       readers, gpus):
    before = dict(options)
    plan = plan_resources(options, device=device, batch_size=8, decode_size=64 if reads else None,
                          ray=_Cluster(resources, free), held=held)
    assert (plan["num_actors"], plan["num_readers"], plan["num_gpus"]) == (actors, readers, gpus)
    assert plan["decode_size"] == (64 if readers else None)
    assert options == before  # the user's dict is not changed


@pytest.mark.parametrize("options, seconds", [({}, (600, 3600)),
                                              ({"start_timeout": 45, "batch_timeout": 7}, (45, 7)),
                                              ({"start_timeout": 2.5}, (2.5, 3600))],
                         ids=["default", "int", "float"])
def test_every_wait_has_a_timeout(options, seconds):
    plan = plan_resources(options, device="cpu", batch_size=8, decode_size=64,
                          ray=_Cluster({"CPU": 4.0, "memory": 8 * GiB}))
    assert (plan["start_timeout"], plan["batch_timeout"]) == seconds


@pytest.mark.parametrize("key", ["start_timeout", "batch_timeout"])
@pytest.mark.parametrize("value", [0, -1, "60", True, float("nan")])
def test_timeouts_must_be_positive_seconds(key, value):
    with pytest.raises(ValueError, match=rf"engine_options\['{key}'\] must be"):
        check_engine("ray", {key: value})


# --------------------------------------------------------------------------------------------
# Through an estimator: refused before any pipeline starts; a start timeout is explained
# --------------------------------------------------------------------------------------------




class Launched(Exception):
    """Raised where the engine's actors would start."""


@pytest.fixture
def fake_cluster(monkeypatch):
    """Ray 'initialised' with the resources set by the test; no actor ever starts (an engine
    that would start raises ``Launched``, or, with ``state["ready"] = False``, never gets
    ready)."""
    state = {"resources": dict(CPU2), "ready": None, "closed": 0}

    class FakeEngine:
        readers = []

        def __init__(self, key, plan, module, ray):
            if state["ready"] is None:
                raise Launched()
            self.plan = plan

        def wait_ready(self, timeout):
            state["timeout"] = timeout
            return state["ready"]

        def close(self):
            state["closed"] += 1

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: dict(state["resources"]))
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 0.0, "memory": 4 * GiB})
    monkeypatch.setattr(sk_a2.ray_engine, "lookup", lambda key, ray: None)
    monkeypatch.setattr(sk_a2.ray_engine, "Engine", FakeEngine)
    return state


@pytest.fixture(scope="module")
def small():
    X, _ = blob_images(4, size=64, seed=2)
    return make_timm(img_size=64, seed=1), X


def _cropper(vit, options, device="cpu"):
    return AttentionCropper(vit, crop_sizes=(32,), image_size=64, device=device,
                            precision="float32", engine="ray", engine_options=options).fit()


def test_too_many_gpus_is_refused_before_any_actor_starts(fake_cluster, small):
    vit, X = small
    with pytest.raises(ValueError, match=r"engine_options\['num_gpus'\].*0 GPU"):
        _cropper(vit, {"num_gpus": 1}).transform(X)
    with pytest.raises(Launched):  # control: a request that fits does start the actors
        _cropper(vit, {}).transform(X)


def test_actor_start_timeout_names_the_option_and_the_resources(fake_cluster, small):
    vit, X = small
    fake_cluster["ready"] = False
    with pytest.raises(TimeoutError) as info:
        _cropper(vit, {"start_timeout": 30}).transform(X)
    message = str(info.value)
    for part in ("engine_options['start_timeout']=30 s", "1 model actor", "1 CPU",
                 "free now on the Ray cluster: 0 CPU, 0 GPU, 4.00 GiB memory"):
        assert part in message, message
    assert fake_cluster["timeout"] == 30 and fake_cluster["closed"] == 1  # its actors ended


# --------------------------------------------------------------------------------------------
# One private local Ray instance with 2 CPUs, shared by the tests below
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_cpus():
    """A private local Ray instance with 2 logical CPUs (as on a 2-core machine); its engines
    closed and the instance shut down after the module."""
    os.environ.pop("RAY_ADDRESS", None)
    assert not ray.is_initialized()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    close_engines()
    ray.shutdown()


def test_two_cpu_instance_runs_the_default_engine(two_cpus, small):
    """No engine_options: the default actors leave the reading to themselves (no CPU to spare
    for reading actors) and ``transform`` finishes with the in-process results; the embedder
    of the same model reuses the cropper's actors."""
    vit, X = small
    with pytest.raises(ValueError, match=r"engine_options\['num_gpus'\]"):
        _cropper(vit, {"num_gpus": 1}).transform(X)
    with pytest.raises(ValueError, match=r"engine_options\['num_actors'\]=3: 3 model actors of "
                                         r"1 CPU each need 3 CPU but the Ray cluster has 2 CPU"):
        _cropper(vit, {"num_actors": 3}).transform(X)
    common = dict(image_size=64, device="cpu", precision="float32", batch_size=2)
    ref = AttentionCropper(vit, crop_sizes=(32,), **common).fit().transform(X)
    got = AttentionCropper(vit, crop_sizes=(32,), engine="ray", **common).fit().transform(X)
    np.testing.assert_array_equal(got.boxes, ref.boxes)
    np.testing.assert_array_equal(got.scores, ref.scores)
    emb = CropEmbedder(vit, engine="ray", **common).fit(ref).transform(ref)
    np.testing.assert_array_equal(emb, CropEmbedder(vit, **common).fit(ref).transform(ref))
    (engine,) = open_engines()
    assert (engine.plan["num_actors"], engine.plan["num_readers"]) == (2, 0)


@ray.remote(num_cpus=2)
class _Holder:
    """Other Ray work holding both CPUs."""

    def ready(self):
        return True


def test_actors_that_cannot_start_time_out_with_a_message(two_cpus, small):
    vit, X = small
    close_engines()
    holder = _Holder.remote()
    try:
        assert ray.get(holder.ready.remote(), timeout=120)
        start = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            _cropper(vit, {"start_timeout": 2}).transform(X)
        assert time.monotonic() - start < 60
    finally:
        ray.kill(holder)
    message = str(info.value)
    for part in ("engine_options['start_timeout']=2 s", "1 model actor", ": 0 CPU, 0 GPU"):
        assert part in message, message
    assert open_engines() == []


def slow_layer(layer, armed):
    """``layer`` that sleeps a minute while ``armed`` (a file) exists."""

    class Slow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = layer

        def forward(self, x):
            if os.path.exists(armed):
                time.sleep(60)
            return self.inner(x)

    return Slow()


def test_a_stalled_batch_times_out_with_a_message(two_cpus, small, tmp_path):
    """The engine started by a call with a long ``batch_timeout`` is warm; the next call's
    own, short one bounds its wait."""
    vit, X = small
    armed = tmp_path / "armed"
    slow = make_timm(img_size=64, seed=1)
    # in the first block: the attention forward runs it (it stops at the last block)
    slow.blocks[0].ls2 = slow_layer(slow.blocks[0].ls2, str(armed))
    est = _cropper(slow, {"batch_timeout": 120, "num_actors": 1})
    est.transform(X)  # starts the engine
    armed.touch()
    est.set_params(engine_options={"batch_timeout": 1, "num_actors": 1})
    with pytest.raises(TimeoutError) as info:
        est.transform(X)
    message = str(info.value)
    for part in ("engine_options['batch_timeout']=1 s", "queued on 1 model actor", "free now"):
        assert part in message, message
    assert open_engines() == []  # the stalled engine is closed: its actors ended
    armed.unlink()
    ref = AttentionCropper(slow, crop_sizes=(32,), image_size=64, device="cpu",
                           precision="float32").fit().transform(X)
    est.set_params(engine_options={"batch_timeout": 120, "num_actors": 1})
    np.testing.assert_array_equal(est.transform(X).boxes, ref.boxes)  # a new engine runs
