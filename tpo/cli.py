"""The ``tpo`` command: ``tpo fit|validate|test|predict|demo|eval``.

``tpo fit --config configs/demo.yaml`` trains through LightningCLI; ``tpo eval ...`` scores
prediction files (see :mod:`tpo.metrics.cli`); ``tpo demo`` runs the embedded demo (see
:mod:`tpo.demo`).
"""

from __future__ import annotations

import argparse
import sys

from tpo import __version__

SUBCOMMANDS = {
    "demo": "run the embedded demo offline (tiny model, synthetic videos)",
    "eval": "score prediction files with the official protocols (qvhighlights, charades)",
    "fit": "train a TPOModule from a YAML config (LightningCLI)",
    "validate": "evaluate a checkpoint on the validation data (LightningCLI)",
    "test": "evaluate a checkpoint on the test data (LightningCLI)",
    "predict": "predict spans / boxes / tracks / masks (LightningCLI)",
}
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def lightning_main(argv: list[str]) -> int:
    """``tpo fit|validate|test|predict --config cfg.yaml [...]`` through LightningCLI, with the
    omegaconf parser mode (``${...}`` interpolation inside a config)."""
    from lightning.pytorch.cli import LightningCLI

    from tpo.datamodules import MultiTaskDataModule
    from tpo.module import TPOModule

    LightningCLI(
        TPOModule,
        MultiTaskDataModule,
        args=argv,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        command, rest = argv[0], argv[1:]
        if command == "eval":
            from tpo.metrics.cli import eval_main

            return eval_main(rest)
        if command in LIGHTNING_SUBCOMMANDS:
            return lightning_main(argv)
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
