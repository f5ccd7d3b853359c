"""``output_dir``: a result file is never left looking complete when it is not, and one path rule
for every folder the package writes into (``output_dir``, ``cache``, the CLI's ``--out``).

A transform into an ``output_dir`` writes ``embeddings-<hex>.npy.partial`` and renames it to
``embeddings-<hex>.npy`` only once every row is written; a failure removes it; a killed process
leaves only the partial name.
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import random_images
from PIL import Image

import sk_a2._base
import sk_a2.embedder
import sk_a2.ray_engine
from sk_a2 import CropEmbedder
from sk_a2.outputs import check_output_dir, write_file_rows

BLOCK = 2  # images per output block in these tests: 5 images are 3 blocks
N = 5
FINAL = re.compile(r"embeddings-[0-9a-f]{32}\.npy")
PARTIAL = re.compile(r"embeddings-[0-9a-f]{32}\.npy\.partial")


def make(weights, **kw):
    return CropEmbedder("timm:test_vit", weights=weights, image_size=64, device="cpu",
                        precision="float32", **kw)


def images(tmp_path, unreadable=False):
    """``N`` images; with ``unreadable``, image 2 (the first of the second block) is a text file
    named ``.jpg``."""
    X = list(random_images(N, 64, 64, seed=3))
    if unreadable:
        X[2] = tmp_path / "text.jpg"
        X[2].write_text("not an image")
    return X


class Blocks:
    """Spy on the embedding of each output block: the output folder's listing as each block
    starts, and ``fail`` raised as the second block starts (after the first was written)."""

    def __init__(self, folder, fail=None):
        self.folder, self.fail, self.listings = Path(folder), fail, []
        self.embed = CropEmbedder._embed

    def __call__(self, estimator, X):
        self.listings.append(sorted(os.listdir(self.folder)) if self.folder.exists() else None)
        if len(self.listings) == 2 and self.fail is not None:
            raise self.fail
        return self.embed(estimator, X)


def fake_ray(monkeypatch):
    """The Ray engine's contract without Ray: the driver hands the output file to
    ``run_sharded``, whose actors write each batch's rows into it by file name."""
    def run_sharded(estimator, X, *, outputs=None, worker_params=None, **kwargs):
        target = outputs["out"]
        for start in range(0, len(X), BLOCK):
            rows = estimator._embed(X[start:start + BLOCK])
            write_file_rows(target.filename, target.offset, target.dtype,
                            np.arange(start, start + len(rows)), rows)
        return outputs

    monkeypatch.setattr(sk_a2.embedder, "check_engine", lambda engine, options: None)
    monkeypatch.setattr(sk_a2.ray_engine, "run_sharded", run_sharded)


ENGINES = [pytest.param(None, id="in-process"),
           pytest.param("ray", id="ray (actors write by file name)")]


def spied(monkeypatch, folder, engine, fail=None):
    spy = Blocks(folder, fail)
    monkeypatch.setattr(sk_a2.embedder, "OUTPUT_BLOCK", BLOCK)
    monkeypatch.setattr(CropEmbedder, "_embed", lambda self, X: spy(self, X))
    if engine == "ray":
        fake_ray(monkeypatch)
    return spy


# --------------------------------------------------------------------------------------------
# Partial files: success renames, failure removes, a kill leaves only a partial name
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_success_leaves_one_final_file_equal_to_the_in_memory_result(tmp_path, tiny_vit_file,
                                                                     monkeypatch, engine):
    X = images(tmp_path)
    oracle = make(tiny_vit_file).fit(X).transform(X)
    folder = tmp_path / "out"
    spy = spied(monkeypatch, folder, engine)
    got = make(tiny_vit_file, output_dir=folder, engine=engine).fit(X).transform(X)
    assert len(spy.listings) == 3
    (while_writing,) = spy.listings[1]  # during the work: only a name that says partial
    assert PARTIAL.fullmatch(while_writing)
    (name,) = os.listdir(folder)
    assert FINAL.fullmatch(name) and while_writing == name + ".partial"
    assert isinstance(got, np.memmap) and Path(got.filename) == folder / name
    np.testing.assert_array_equal(got, oracle)
    np.testing.assert_array_equal(np.load(folder / name), oracle)


FAILURES = [
    pytest.param("error", id="error in the second block"),
    pytest.param("interrupt", id="KeyboardInterrupt in the second block"),
    pytest.param("unreadable", id="unreadable image in the second block"),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("failure", FAILURES)
def test_a_failed_transform_leaves_no_file(tmp_path, tiny_vit_file, monkeypatch, failure,
                                           engine):
    X = images(tmp_path, unreadable=failure == "unreadable")
    folder = tmp_path / "out"
    fail = {"error": RuntimeError("out of memory"), "interrupt": KeyboardInterrupt()}
    spy = spied(monkeypatch, folder, engine, fail.get(failure))
    embedder = make(tiny_vit_file, output_dir=folder, engine=engine).fit(X[:2])
    expected = {"error": RuntimeError, "interrupt": KeyboardInterrupt,
                "unreadable": ValueError}[failure]
    with pytest.raises(expected):
        embedder.transform(X)
    if failure != "unreadable":  # the failure came with the output file open, a block written
        assert len(spy.listings) == 2 and PARTIAL.fullmatch(*spy.listings[1])
    assert os.listdir(folder) == []


KILLED = """
import os, signal, sys
import numpy as np
import sk_a2.embedder
from sk_a2 import CropEmbedder
weights, folder = sys.argv[1], sys.argv[2]
sk_a2.embedder.OUTPUT_BLOCK = 2
embed = CropEmbedder._embed
blocks = []
def killed_in_second_block(self, X):
    blocks.append(len(X))
    if len(blocks) == 2:  # one block written, the file open: killed, nothing cleans up
        os.kill(os.getpid(), signal.SIGKILL)
    return embed(self, X)
CropEmbedder._embed = killed_in_second_block
X = np.random.RandomState(0).randint(0, 256, (5, 64, 64, 3), dtype=np.uint8)
CropEmbedder("timm:test_vit", weights=weights, image_size=64, device="cpu", precision="float32",
             output_dir=folder).fit(X).transform(X)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_transform_leaves_only_a_partial_file(tmp_path, tiny_vit_file):
    folder = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILLED, str(tiny_vit_file), str(folder)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    (name,) = os.listdir(folder)
    assert PARTIAL.fullmatch(name)


def test_the_ray_engine_leaves_a_final_file_only_when_complete(tmp_path, tiny_vit_file):
    """With a real local Ray: the actors write the partial file, the driver renames it; a failed
    batch (an unreadable image) leaves nothing."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        paths = []
        for i, pixels in enumerate(images(tmp_path)):
            paths.append(str(tmp_path / f"{i}.png"))
            Image.fromarray(pixels).save(paths[-1])
        folder = tmp_path / "out"
        embedder = make(tiny_vit_file, output_dir=folder, engine="ray",
                        engine_options={"num_actors": 1, "batch_size": BLOCK}).fit(paths)
        got = embedder.transform(paths)
        (name,) = os.listdir(folder)
        assert FINAL.fullmatch(name) and Path(got.filename) == folder / name
        np.testing.assert_array_equal(got, make(tiny_vit_file).fit(paths).transform(paths))
        with pytest.raises(Exception, match="text.jpg"):
            embedder.transform([*paths[:4], images(tmp_path, unreadable=True)[2]])
        assert os.listdir(folder) == [name]
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------------------------
# The path rule: checked in fit (before any model work) and again in transform
# --------------------------------------------------------------------------------------------


def _no_model_work(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded or run")

    monkeypatch.setattr(sk_a2._base, "load_model", fail)
    monkeypatch.setattr(CropEmbedder, "_embed", fail)


def _read_only(folder, monkeypatch):
    """Make ``folder`` unwritable; as root (permissions not enforced) deny its probe file."""
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):
        real = tempfile.mkstemp

        def deny(*args, dir=None, **kwargs):
            if dir is not None and Path(dir) == folder:
                raise PermissionError(13, "Permission denied", str(dir))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", deny)


def _target(tmp_path, kind, monkeypatch):
    target = tmp_path / "out"
    if kind == "existing file":
        target.write_text("not a folder")
    elif kind == "read-only folder":
        target.mkdir()
        _read_only(target, monkeypatch)
    elif kind == "under a file":
        (tmp_path / "plain").write_text("x")
        target = tmp_path / "plain" / "out"
    return {"empty": "", "blank": "  "}.get(kind, target)


BAD_DIRS = [  # kind, what the message says (after output_dir and the path)
    pytest.param("empty", r"output_dir='' names no folder .*; pass a folder path or None",
                 id="empty"),
    pytest.param("blank", r"output_dir='  ' names no folder .*; pass a folder path or None",
                 id="whitespace only"),
    pytest.param("existing file", r"output_dir folder '.*out' is a file, not a folder; pass a "
                 "folder path or None", id="an existing file"),
    pytest.param("under a file", r"output_dir folder '.*plain/out' cannot be written \(.*\); "
                 "pass a writable folder or None", id="under a file"),
    pytest.param("read-only folder", r"output_dir folder '.*out' cannot be written "
                 r"\(Permission denied\); pass a writable folder or None", id="read-only"),
]


@pytest.mark.parametrize(("kind", "message"), BAD_DIRS)
def test_a_bad_output_dir_fails_in_fit(tmp_path, tiny_vit_file, monkeypatch, kind, message):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    output_dir = _target(tmp_path, kind, monkeypatch)
    _no_model_work(monkeypatch)
    try:
        with pytest.raises(ValueError, match=f"^{message}$"):
            make(tiny_vit_file, output_dir=output_dir).fit(random_images(1))
    finally:
        if kind == "read-only folder":
            output_dir.chmod(0o700)
    assert os.listdir(cwd) == []  # nothing written into the working folder


@pytest.mark.parametrize("kind", ["existing file", "read-only folder"])
def test_an_output_dir_spoiled_after_fit_fails_before_the_model_runs(tmp_path, tiny_vit_file,
                                                                     monkeypatch, kind):
    X = random_images(2, 64, 64)
    embedder = make(tiny_vit_file, output_dir=tmp_path / "out").fit(X)
    if (tmp_path / "out").exists():
        (tmp_path / "out").rmdir()
    output_dir = _target(tmp_path, kind, monkeypatch)
    _no_model_work(monkeypatch)
    try:
        with pytest.raises(ValueError, match=r"^output_dir folder .*out"):
            embedder.transform(X)
    finally:
        if kind == "read-only folder":
            output_dir.chmod(0o700)
    if kind == "read-only folder":
        assert os.listdir(output_dir) == []


def test_output_dir_expands_the_home_folder(tmp_path, tiny_vit_file, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    X = random_images(2, 64, 64)
    got = make(tiny_vit_file, output_dir="~/emb").fit(X).transform(X)
    assert Path(got.filename).parent == home / "emb"
    assert os.listdir(cwd) == []  # no literal ./~ folder


# --------------------------------------------------------------------------------------------
# The rule itself, as cache and the CLI's --out use it
# --------------------------------------------------------------------------------------------


RULE = [  # name, otherwise, path, message
    pytest.param("--out", (), "", r"--out '' names no folder \(it would write into the current "
                 r"directory\); pass a folder path", id="--out empty"),
    pytest.param("cache", ("'memory'", "None"), " ", r"cache=' ' names no folder \(it would "
                 r"write into the current directory\); pass a folder path, 'memory', or None",
                 id="cache blank"),
    pytest.param("--out", (), "FILE", r"--out folder '.*f' is a file, not a folder; pass a "
                 "folder path", id="--out a file"),
    pytest.param("cache", ("'memory'", "None"), "FILE/x", r"cache folder '.*f/x' cannot be "
                 r"written \(.*\); pass a writable folder, 'memory', or None",
                 id="cache under a file"),
]


@pytest.mark.parametrize(("name", "otherwise", "path", "message"), RULE)
def test_the_rule_names_the_option_and_its_alternatives(tmp_path, name, otherwise, path,
                                                        message):
    (tmp_path / "f").write_text("x")
    path = path.replace("FILE", str(tmp_path / "f"))
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_output_dir(path, name, otherwise=otherwise)


def test_the_rule_creates_the_folder_and_leaves_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    got = check_output_dir(Path("~/a/b"), "--out")
    assert got == tmp_path / "a" / "b" and got.is_dir() and os.listdir(got) == []
    assert check_output_dir(str(got)) == got  # an existing folder is fine
