"""The Ray engine's connection and resource plan: which cluster it joins, and a clear error
(never a silent wait) when the cluster cannot hold the actors it asks for.

Ray itself is replaced by recorders here (``ray.init``, ``ray.cluster_resources``, the Ray Data
pipeline), so no cluster starts; one test at the end runs a private local instance once.
"""

import atexit

import numpy as np
import pytest
from conftest import blob_images, make_timm

import sk_a2.ray_engine
from sk_a2 import AttentionCropper
from sk_a2.ray_engine import check_engine, connect

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data", reason='Ray Data (pyarrow) missing: pip install "sk-a2[ray]"')
from ray.data import DataContext  # noqa: E402

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
    """The part of the ``ray`` module the resource plan reads."""

    def __init__(self, resources):
        self.resources = resources

    def cluster_resources(self):
        return dict(self.resources)


CPU2 = {"CPU": 2.0, "memory": 8 * GiB}

TOO_BIG = {
    # name: (cluster resources, engine_options, device, the option the error names, words)
    "gpus-asked-cluster-has-none": (
        CPU2, {"num_gpus": 1}, "cpu", "num_gpus", "0 GPU"),
    "more-gpus-per-actor-than-the-cluster": (
        {"CPU": 8.0, "GPU": 1.0, "memory": 8 * GiB}, {"num_gpus": 2}, "auto", "num_gpus",
        "1 GPU"),
    "more-cpus-per-actor-than-the-cluster": (
        CPU2, {"num_cpus": 4}, "cpu", "num_cpus", "2 CPU"),
    "actor-and-reading-task-do-not-fit-together": (
        CPU2, {"num_cpus": 2}, "cpu", "num_cpus", "reading task"),
    "reading-task-needs-more-cpus-than-the-cluster": (
        CPU2, {"read_cpus": 3}, "cpu", "read_cpus", "2 CPU"),
    "pool-larger-than-the-cluster": (
        CPU2, {"num_actors": 3}, "cpu", "num_actors", "2 CPU"),
    "gpu-pool-larger-than-the-cluster": (
        {"CPU": 16.0, "GPU": 2.0, "memory": 8 * GiB}, {"num_actors": 3, "num_gpus": 1}, "auto",
        "num_actors", "2 GPU"),
    "reading-task-memory-past-the-cluster": (
        {"CPU": 4.0, "memory": 1.05 * GiB}, {"batch_size": 2048}, "cpu", "batch_size", "memory"),
}


@pytest.mark.parametrize("resources, options, device, key, words", TOO_BIG.values(), ids=TOO_BIG)
def test_request_the_cluster_cannot_hold_is_refused(monkeypatch, resources, options, device, key,
                                                    words):
    monkeypatch.setattr(DataContext.get_current(), "wait_for_min_actors_s", -1)
    with pytest.raises(ValueError) as info:
        plan_resources(options, device=device, batch_size=8, decode_size=64,
                       ray=_Cluster(resources))
    message = str(info.value)
    assert f"engine_options[{key!r}]" in message and words in message, message


PLANS = {
    # name: (cluster resources, engine_options, device, reading tasks?, planned actors, GPUs each)
    "two-cpus-one-actor-beside-the-reading-task": (CPU2, {}, "cpu", True, 1, 0),
    "two-cpus-two-actors-when-nothing-reads": (CPU2, {}, "cpu", False, 2, 0),
    "three-cpus-two-actors": ({"CPU": 3.0, "memory": 8 * GiB}, {}, "cpu", True, 2, 0),
    "one-actor-per-gpu": ({"CPU": 16.0, "GPU": 4.0, "memory": 8 * GiB}, {}, "auto", True, 4, 1),
    "gpu-actors-bounded-by-cpus": ({"CPU": 3.0, "GPU": 4.0, "memory": 8 * GiB}, {}, "auto",
                                   True, 2, 1),
    "half-gpu-actors": ({"CPU": 16.0, "GPU": 1.0, "memory": 8 * GiB}, {"num_gpus": 0.5},
                        "auto", True, 2, 0.5),
    "cpu-device-never-asks-for-gpus": ({"CPU": 16.0, "GPU": 4.0, "memory": 8 * GiB}, {}, "cpu",
                                       True, 2, 0),
    "explicit-pool-that-fits": (CPU2, {"num_actors": 2}, "cpu", False, 2, 0),
}


@pytest.mark.parametrize("resources, options, device, reads, actors, gpus", PLANS.values(),
                         ids=PLANS)
def test_default_pool_fits_the_cluster(monkeypatch, resources, options, device, reads, actors,
                                       gpus):
    monkeypatch.setattr(DataContext.get_current(), "wait_for_min_actors_s", -1)
    before = dict(options)
    plan = plan_resources(options, device=device, batch_size=8, decode_size=64 if reads else None,
                          ray=_Cluster(resources))
    assert (plan["num_actors"], plan["num_gpus"]) == (actors, gpus)
    assert options == before  # the user's dict is not changed


@pytest.mark.parametrize("options, seconds", [({}, 600), ({"start_timeout": 45}, 45),
                                              ({"start_timeout": 2.5}, 2.5)],
                         ids=["default", "int", "float"])
def test_every_wait_for_the_actors_has_a_timeout(monkeypatch, options, seconds):
    context = DataContext.get_current()
    monkeypatch.setattr(context, "wait_for_min_actors_s", -1)  # Ray Data's default: forever
    plan_resources(options, device="cpu", batch_size=8, decode_size=64,
                   ray=_Cluster({"CPU": 4.0, "memory": 8 * GiB}))
    assert context.wait_for_min_actors_s == seconds


@pytest.mark.parametrize("value", [0, -1, "60", True, float("nan")])
def test_start_timeout_must_be_positive_seconds(value):
    with pytest.raises(ValueError, match=r"engine_options\['start_timeout'\] must be"):
        check_engine("ray", {"start_timeout": value})


# --------------------------------------------------------------------------------------------
# Through an estimator: refused before any pipeline starts; a start timeout is explained
# --------------------------------------------------------------------------------------------


class Launched(Exception):
    """Raised where the Ray Data pipeline would start."""


class _FakeDataset:
    def __init__(self, error):
        self.error = error

    def map_batches(self, fn, **kw):
        return self

    def iter_batches(self, **kw):
        raise self.error


@pytest.fixture
def fake_cluster(monkeypatch):
    """Ray 'initialised' with the resources set by the test; the pipeline never runs."""
    state = {"resources": dict(CPU2), "error": Launched()}
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: dict(state["resources"]))
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 0.0, "memory": 4 * GiB})
    monkeypatch.setattr(ray, "put", lambda value: value)
    monkeypatch.setattr(ray.data, "from_numpy", lambda blocks: _FakeDataset(state["error"]))
    monkeypatch.setattr(DataContext.get_current(), "wait_for_min_actors_s", -1)
    return state


@pytest.fixture(scope="module")
def small():
    X, _ = blob_images(4, size=64, seed=2)
    return make_timm(img_size=64, seed=1), X


def _cropper(vit, options, device="cpu"):
    return AttentionCropper(vit, crop_sizes=(32,), image_size=64, device=device,
                            precision="float32", engine="ray", engine_options=options).fit()


def test_too_many_gpus_is_refused_before_the_pipeline_starts(fake_cluster, small):
    vit, X = small
    with pytest.raises(ValueError, match=r"engine_options\['num_gpus'\].*0 GPU"):
        _cropper(vit, {"num_gpus": 1}).transform(X)


def test_actor_start_timeout_names_the_option_and_the_resources(fake_cluster, small):
    vit, X = small
    fake_cluster["error"] = ray.exceptions.GetTimeoutError(
        "Timed out while starting actors. This may mean that the cluster does not have enough "
        "resources for the requested actor pool.")
    with pytest.raises(TimeoutError) as info:
        _cropper(vit, {"start_timeout": 30}).transform(X)
    message = str(info.value)
    for part in ("engine_options['start_timeout']", "30 s", "1 model actor", "1 CPU",
                 "free now", "'CPU': 0.0"):
        assert part in message, message
    assert not isinstance(info.value, ray.exceptions.GetTimeoutError)


# --------------------------------------------------------------------------------------------
# One private local Ray instance with 2 CPUs: the default pool runs; GPUs are refused at once
# --------------------------------------------------------------------------------------------


def test_private_two_cpu_instance_runs_the_default_pool(small, monkeypatch):
    vit, X = small
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(ValueError, match=r"engine_options\['num_gpus'\]"):
            _cropper(vit, {"num_gpus": 1}).transform(X)
        got = _cropper(vit, {"batch_size": 2, "start_timeout": 300}).transform(X)
    finally:
        ray.shutdown()
    ref = AttentionCropper(vit, crop_sizes=(32,), image_size=64, device="cpu",
                           precision="float32").fit().transform(X)
    np.testing.assert_array_equal(got.boxes, ref.boxes)
    np.testing.assert_array_equal(got.scores, ref.scores)
