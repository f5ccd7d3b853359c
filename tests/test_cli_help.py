"""``sk-a2 --help``: light (no PyTorch), literal, and one error form per subcommand.

No model runs here: help and argument errors end before any work.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sk_a2.cli import SUBCOMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parent.parent
#: Modules that ``--help`` must not import: the model libraries and scikit-learn's stack.
HEAVY = ("torch", "timm", "open_clip", "sklearn", "scipy", "matplotlib", "PIL")

_PROBE = """
import json, sys
from sk_a2.cli import SUBCOMMANDS, main
codes = []
for argv in [["--help"], ["--version"]] + [[name, "--help"] for name in SUBCOMMANDS]:
    try:
        codes.append(main(argv))
    except SystemExit as exc:
        codes.append(exc.code)
print(json.dumps({"codes": codes, "loaded": sorted(m for m in HEAVY if m in sys.modules)}))
"""
_LAZY_PROBE = """
import json, sys, sk_a2
before = [m for m in HEAVY if m in sys.modules]
from sk_a2 import AttentionCropper, worst_group_scorer
print(json.dumps({"before": before, "all": sk_a2.__all__,
                  "dir": [n for n in sk_a2.__all__ if n in dir(sk_a2)],
                  "cls": AttentionCropper.__module__,
                  "same": sk_a2.AttentionCropper is AttentionCropper,
                  "sub": sk_a2.datasets.__name__}))
"""


def _probe(code):
    """Run ``code`` in a fresh interpreter (``HEAVY`` defined); its last line, as JSON."""
    done = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{code}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _subparsers():
    parser = build_parser()
    return parser, next(a for a in parser._actions if a.dest == "command").choices


def _error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------- help


def test_help_imports_no_model_library():
    """``sk-a2 --help`` and each ``sk-a2 <command> --help`` answer without importing PyTorch,
    timm, open_clip, scikit-learn, SciPy, matplotlib or PIL (a fresh interpreter)."""
    result = _probe(_PROBE)
    assert result["codes"] == [0] * (2 + len(SUBCOMMANDS))
    assert result["loaded"] == []


def test_package_import_is_lazy_and_complete():
    """``import sk_a2`` loads no model library; every exported name still imports, ``dir``
    lists them, and an unknown name is an AttributeError."""
    result = _probe(_LAZY_PROBE)
    assert result["before"] == []
    assert result["dir"] == result["all"] and "AttentionCropper" in result["all"]
    assert result["cls"] == "sk_a2.cropper" and result["same"]
    assert result["sub"] == "sk_a2.datasets"

    import sk_a2

    for name in sk_a2.__all__:
        assert getattr(sk_a2, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        sk_a2.NoSuchName  # noqa: B018


def test_static_names_match_the_library():
    """The names the help lists without importing the library are the library's."""
    from sk_a2.attention import HEAD_AGGREGATIONS
    from sk_a2.cli import evaluate, localize
    from sk_a2.datasets import list_benchmarks
    from sk_a2.original_crops import CROP_SOURCES

    assert tuple(evaluate.BENCHMARKS) == tuple(list_benchmarks())
    assert tuple(localize.HEAD_AGGREGATIONS) == tuple(HEAD_AGGREGATIONS)
    assert tuple(evaluate.CROP_SOURCES) == tuple(CROP_SOURCES)


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help_has_no_doubled_percent(command, capsys):
    assert main(["--help"] if command is None else [command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "%%" not in out
    if command == "localize":
        assert "top-10%/25%" in " ".join(out.split())


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_each_option_names_the_offline_model_once(command):
    """``(default: imgfocus_vits14; imgfocus_vits14 works offline)`` said the name twice."""
    parser = _subparsers()[1][command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help:
            text = formatter._expand_help(action)
            assert text.count("imgfocus_vits14") <= 1, (action.option_strings, text)


def test_demo_help_says_the_default_works_offline(capsys):
    assert main(["demo", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: imgfocus_vits14, which works offline)" in out


# ----------------------------------------------------------------------------------- errors


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(path)
    return str(path)


def _argv(command, image, *extra):
    head = {"crops": ["crops", image], "demo": ["demo"], "localize": ["localize"],
            "evaluate": ["evaluate", "--dataset", "waterbirds", "--root", "/nonexistent/wb"]}
    return [*head[command], *extra]


@pytest.mark.parametrize("command", ["crops", "demo", "evaluate"])
@pytest.mark.parametrize("text", ["64,,32", ",64", "64,", "64, ,32"])
def test_crop_sizes_refuse_empty_items(command, text, image, tmp_path, capsys):
    # --image-size 20 and a missing --root stop any run that got past the parser
    stop = ["--image-size", "20", "--out", str(tmp_path / "o")] if command != "evaluate" else []
    assert main(_argv(command, image, "--crop-sizes", text, *stop)) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(f"sk-a2 {command}: error: argument --crop-sizes: empty item in "
                           f"{text!r}; write sizes separated by single commas, e.g. 64,32")


@pytest.mark.parametrize("text, sizes", [("64,32", (64, 32)), ("64", (64,)),
                                         ("64, 32", (64, 32))])
def test_crop_sizes_accept_single_commas(text, sizes):
    from sk_a2.cli.common import crop_sizes

    assert crop_sizes(text) == sizes


@pytest.mark.parametrize("command, extra, needle", [
    ("demo", ["--bogus"], "unrecognized arguments: --bogus"),
    ("crops", ["--model", "dinov9_huge"], "Unknown model 'dinov9_huge'"),
    ("crops", ["--crop-sizes", "a,b"], "argument --crop-sizes"),
    ("evaluate", [], "--root '/nonexistent/wb' does not exist"),
    ("localize", ["--models", "timm:test_vit", "--image-size", "20"], "--image-size 20"),
    ("localize", ["--dataset", "imagenet"], "--dataset imagenet needs --root"),
])
def test_every_error_of_a_command_has_its_prefix(command, extra, needle, image, tmp_path,
                                                 capsys):
    """Parser errors, refused options and bad paths, models or data: all
    ``sk-a2 <command>: error: ...``."""
    argv = _argv(command, image, *extra, *(["--out", str(tmp_path / "o")]
                                          if command != "evaluate" else []))
    assert main(argv) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(f"sk-a2 {command}: error: "), line
    assert needle in line


def test_errors_without_a_command_have_the_bare_prefix(capsys):
    assert main([]) == 2
    assert _error_line(capsys.readouterr().err).startswith("sk-a2: error: ")
    assert main(["bogus"]) == 2
    assert _error_line(capsys.readouterr().err).startswith("sk-a2: error: argument <command>")


# ------------------------------------------------------------------------- crops --recursive


def _tree(root):
    """``root/cat/1.png``, ``root/cat/2.png``, ``root/dog/deep/3.png``: no image at the top."""
    for rel in ("cat/1.png", "cat/2.png", "dog/deep/3.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(root / rel)
    (root / "notes.txt").write_text("not an image")
    return root


def test_crops_folder_of_subfolders_suggests_recursive(tmp_path, capsys):
    root = _tree(tmp_path / "pets")
    assert main(["crops", str(root), "--out", str(tmp_path / "o")]) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(f"sk-a2 crops: error: folder {str(root)!r} holds no image files, "
                           "but its subfolders do")
    assert "--recursive" in line and repr(str(root / "*" / "*.png")) in line


def test_crops_recursive_expands_subfolders(tmp_path):
    from sk_a2.cli.crops import expand_images

    root = _tree(tmp_path / "pets")
    (root / "top.png").write_bytes((root / "cat" / "1.png").read_bytes())
    assert expand_images([str(root)]) == [str(root / "top.png")]
    assert expand_images([str(root)], recursive=True) == [
        str(root / rel) for rel in ("cat/1.png", "cat/2.png", "dog/deep/3.png", "top.png")]


def test_crops_recursive_empty_tree(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main(["crops", str(tmp_path / "empty"), "--recursive", "--out",
                 str(tmp_path / "o")]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "holds no image files, nor do its subfolders" in line
