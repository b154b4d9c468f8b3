"""The ``tpo`` command: ``tpo demo``, ``tpo eval``.

``tpo eval ...`` scores prediction files (see :mod:`tpo.metrics.cli`); ``tpo demo`` runs the
embedded demo (see :mod:`tpo.demo`). The training subcommands (``fit``, ``validate``, ``test``,
``predict`` through LightningCLI) join them with :class:`~tpo.TPOModule`.
"""

from __future__ import annotations

import argparse
import sys

from tpo import __version__

SUBCOMMANDS = {
    "demo": "run the embedded demo offline (tiny model, synthetic videos)",
    "eval": "score prediction files with the official protocols (qvhighlights, charades)",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        command, rest = argv[0], argv[1:]
        if command == "eval":
            from tpo.metrics.cli import eval_main

            return eval_main(rest)
        from tpo.demo import demo_main

        return demo_main(rest)
    parser = argparse.ArgumentParser(
        prog="tpo",
        description="Task-preference heads for multimodal LLMs.",
        epilog="subcommands:\n" + "\n".join(f"  {k:8s}{v}" for k, v in SUBCOMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tpo {__version__}")
    parser.add_argument("command", nargs="?", choices=sorted(SUBCOMMANDS))
    args = parser.parse_args(argv)
    parser.print_help()
    return 0 if args.command is None else 2


if __name__ == "__main__":
    sys.exit(main())
