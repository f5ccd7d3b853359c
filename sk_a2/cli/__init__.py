"""The ``sk-a2`` command (also ``python -m sk_a2``).

Subcommands, one module each in this package:

``sk-a2 demo``
    A² against the full-image baseline, with and without DFR, on the embedded synthetic
    benchmark (:func:`sk_a2.datasets.make_spurious_images`); prints a table and writes it as JSON
    with overlay PNGs.
``sk-a2 crops IMAGE|DIR|GLOB...``
    The crops A² chooses in your own images: one overlay PNG per image, and the boxes printed.
``sk-a2 evaluate --dataset NAME --root DIR``
    One benchmark of the paper (Waterbirds, CelebA, Spawrious, MetaShift), with a logistic
    regression, DFR or zero-shot CLIP head.
``sk-a2 localize``
    How much attention falls inside object boxes, per model and block (the paper's Section 2),
    with its figures.

A subcommand is a module of this package with ``add_parser(subparsers)`` (which adds and returns
its parser) and ``run(args)``; it is registered by adding its module name to ``SUBCOMMANDS``.
Every argument that can be checked without data or models is checked before any work: each
option changes the run or is refused, output folders are created and probed for writing, and
results of an earlier run are not overwritten without ``--overwrite``. Every error of a
subcommand's run, whether a bad option or a bad path, model or data, ends with one line
``sk-a2 <command>: error: <message>`` on stderr, exit status 2 (``sk-a2: error: <message>`` when
no subcommand was named).

``sk-a2 --help`` and ``sk-a2 <command> --help`` import neither PyTorch nor scikit-learn: the
subcommand modules import the library's heavy parts inside the functions that run.
"""

from __future__ import annotations

import importlib
import sys

from .common import PROG, CLIError, OptionError, Parser, clean_message, option_table

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

#: Module names of the subcommands, in the order ``sk-a2 --help`` lists them.
SUBCOMMANDS = ("demo", "crops", "evaluate", "localize")


def build_parser() -> Parser:
    """The parser of the ``sk-a2`` command and its subcommands."""
    from .. import __version__

    parser = Parser(
        prog=PROG,
        description="Attending on Attention (A²): a small ViT's CLS attention picks crops, a "
                    "larger ViT embeds them, a linear head classifies.",
        epilog=f"Run '{PROG} <command> --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    parser.commands = {}
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(run=module.run, option_table=option_table(sub))
        parser.commands[name] = sub
    return parser


def _errors():
    from ..models import WeightsUnavailableError

    return (CLIError, ValueError, OSError, ImportError, WeightsUnavailableError)


def main(argv=None) -> int:
    """Run the ``sk-a2`` command.

    Parameters
    ----------
    argv : sequence of str, default=None
        The arguments after the program name (``None``: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 2 on bad options, paths, models or data (after one line
        ``sk-a2 <command>: error: <message>`` on stderr), 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    prog = f"{PROG} {args.command}"
    try:
        args.run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except OptionError as exc:
        print(f"{prog}: error: {clean_message(exc)} (see '{prog} --help')", file=sys.stderr)
        return 2
    except _errors() as exc:
        print(f"{prog}: error: {clean_message(exc)}", file=sys.stderr)
        return 2
    return 0
