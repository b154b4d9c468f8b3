"""The ``tpo`` command: ``tpo fit|validate|test|predict|demo|ablate|eval``.

``tpo fit --config configs/demo.yaml`` trains through LightningCLI; ``tpo eval ...`` scores
prediction files (see :mod:`tpo.metrics.cli`); ``tpo demo`` runs the embedded demo (see
:mod:`tpo.demo`); ``tpo ablate`` runs the TPO paper's ablations on its data (see :mod:`tpo.ablate`).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tpo import __version__

SUBCOMMANDS = {
    "demo": "run the embedded demo offline (tiny model, synthetic videos)",
    "ablate": "the TPO paper's ablations on the demo's data (heads vs text, single task, no chat)",
    "eval": "score prediction files officially (qvhighlights, charades, davis, got10k, lasot, refcoco)",
    "fit": "train a TPOModule from a YAML config (LightningCLI)",
    "validate": "evaluate a checkpoint on the validation data (LightningCLI)",
    "test": "evaluate a checkpoint on the test data (LightningCLI)",
    "predict": "predict spans / boxes / tracks / masks (LightningCLI)",
}
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


#: Keys jsonargparse accepts in a class group without keeping them under their own name.
_META_KEYS = frozenset({"class_path", "init_args", "dict_kwargs", "__path__", "config"})


def _dropped_keys(raw: Any, namespace: Any, prefix: str = "") -> list[tuple[str, list[str]]]:
    """``(dotted key, valid keys at its level)`` for each key of a config file that the parsed
    namespace does not hold.

    jsonargparse flattens a config file into its leaves before it checks the keys, so a misspelt
    key whose value is an empty mapping (``model.hedas: {box: {}}``) has no leaf and vanishes
    without an error; keys with a value are already rejected by the parser itself.
    """
    from jsonargparse import Namespace

    if not isinstance(raw, Mapping) or not isinstance(namespace, Namespace):
        return []
    children = vars(namespace)
    out = []
    for key, value in raw.items():
        if not isinstance(key, str) or key in _META_KEYS:
            continue
        if key not in children:
            out.append((prefix + key, sorted(k for k in children if k not in _META_KEYS)))
        elif isinstance(value, Mapping):
            out += _dropped_keys(value, children[key], f"{prefix}{key}.")
    return out


def _config_files(namespace: Any) -> list[Path]:
    files = namespace.get("config") if namespace is not None else None
    return [Path(os.fspath(getattr(f, "absolute", f))) for f in files or []]


def _get(spec: Any, key: str) -> Any:
    if spec is None:
        return None
    return spec.get(key) if hasattr(spec, "get") else getattr(spec, key, None)


def check_data_paths(data: Any) -> None:
    """Fail before anything is built when a dataset of ``data.train`` / ``val`` / ``predict`` names a
    ``path``, ``media_root`` or ``read_options.instances_path`` / ``durations`` that does not
    exist.

    Raises:
        FileNotFoundError: naming the config key and the path (relative paths are read from
            the working directory, which the message states).
    """
    for split in ("train", "val", "predict"):
        datasets = _get(data, split)
        if not hasattr(datasets, "items"):
            continue
        for name, spec in datasets.items():
            if isinstance(spec, (str, os.PathLike)) or not (hasattr(spec, "get") or hasattr(spec, "path")):
                continue  # a dataset object, not a spec
            paths = [("path", _get(spec, "path")), ("media_root", _get(spec, "media_root")),
                     *((f"read_options.{k}", _get(_get(spec, "read_options"), k))
                       for k in ("instances_path", "durations"))]
            for key, value in paths:
                if isinstance(value, (str, os.PathLike)) and str(value) and not Path(value).exists():
                    where = "" if Path(value).is_absolute() else f" (relative to {Path.cwd()})"
                    raise FileNotFoundError(
                        f"data.{split}.{name}.{key}: {os.fspath(value)!r} does not exist{where}")


@functools.cache
def _lightning_classes() -> tuple[type, type]:
    """``(DeferredSaveConfig, TPOLightningCLI)``, defined on first use (Lightning is slow to
    import, and ``tpo eval`` / ``tpo --help`` do not need it)."""
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    class DeferredSaveConfig(SaveConfigCallback):
        """LightningCLI's config saving, made safe for failed runs.

        The run's config is written to ``<log_dir>/.config.yaml.partial`` at set-up and moved onto
        ``<log_dir>/config.yaml`` only once the run has done its first batch (training, validation,
        test or predict) or ended without error; a run that fails before that (bad first batch,
        out of memory, interrupted) deletes its partial file and leaves the previous run's
        ``config.yaml`` as it was.
        """

        _pending: tuple[str, str] | None = None

        def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
            if self.already_saved:
                return
            if self.save_to_log_dir:  # as SaveConfigCallback.setup, writing to the partial file
                from lightning.fabric.utilities.cloud_io import get_filesystem

                log_dir = trainer.log_dir  # a collective call: every rank makes it
                assert log_dir is not None
                final = os.path.join(log_dir, self.config_filename)
                partial = os.path.join(log_dir, f".{self.config_filename}.partial")
                fs = get_filesystem(log_dir)
                if not self.overwrite:
                    exists = trainer.strategy.broadcast(fs.isfile(final) if trainer.is_global_zero else False)
                    if exists:
                        raise RuntimeError(f"{final}: exists; not overwriting a previous run's config "
                                           "(LightningCLI save_config_kwargs={'overwrite': True} allows it)")
                if trainer.is_global_zero:
                    fs.makedirs(log_dir, exist_ok=True)
                    try:  # ``skip_none`` became ``skip_unset`` in jsonargparse 4.49
                        self.parser.save(self.config, partial, skip_unset=False, overwrite=True,
                                         multifile=False)
                    except TypeError:
                        self.parser.save(self.config, partial, skip_none=False, overwrite=True,
                                         multifile=False)
                    self._pending = (partial, final)
            if trainer.is_global_zero:
                self.save_config(trainer, pl_module, stage)
                self.already_saved = True
            self.already_saved = trainer.strategy.broadcast(self.already_saved)

        def _commit(self, trainer: Trainer) -> None:
            if self._pending is None or trainer.sanity_checking:
                return
            from fsspec.implementations.local import LocalFileSystem
            from lightning.fabric.utilities.cloud_io import get_filesystem

            partial, final = self._pending
            self._pending = None
            fs = get_filesystem(final)
            if isinstance(fs, LocalFileSystem):
                os.replace(partial, final)  # atomic: the old config or the new one, never half
            else:
                fs.mv(partial, final)

        def on_train_batch_end(self, trainer: Trainer, *_: Any) -> None:
            self._commit(trainer)

        on_validation_batch_end = on_test_batch_end = on_predict_batch_end = on_train_batch_end

        def on_fit_end(self, trainer: Trainer, *_: Any) -> None:
            self._commit(trainer)  # a fit with nothing left to train (max_steps reached)

        on_validation_end = on_test_end = on_predict_end = on_fit_end

        def on_exception(self, trainer: Trainer, pl_module: LightningModule, error: BaseException) -> None:
            if self._pending is None:
                return
            from lightning.fabric.utilities.cloud_io import get_filesystem

            partial, _ = self._pending
            self._pending = None
            fs = get_filesystem(partial)
            if fs.exists(partial):
                fs.rm(partial)

    class TPOLightningCLI(LightningCLI):
        """LightningCLI with start-up checks: config keys it would drop, dataset paths that do not
        exist (both before any model or data is built)."""

        def before_instantiate_classes(self) -> None:
            import yaml

            config = self.config
            scoped = [(config, _config_files(config))]
            if self.subcommand is not None:
                scoped.append((config[self.subcommand], _config_files(config[self.subcommand])))
            for namespace, files in scoped:
                for file in files:
                    try:
                        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
                    except (OSError, yaml.YAMLError):
                        continue  # the parser has read it already; nothing more to learn here
                    dropped = _dropped_keys(raw, namespace)
                    if dropped:
                        key, valid = dropped[0]
                        where = f"of {key.rpartition('.')[0]!r}" if "." in key else "at the top level"
                        self.parser.error(f"{file}: unknown key {key!r}; valid keys {where}: {valid}")
            section = config[self.subcommand] if self.subcommand is not None else config
            check_data_paths(section.get("data"))

        def instantiate_trainer(self, **kwargs: Any) -> Trainer:
            """The trainer; outside a terminal Lightning's tqdm bar is replaced by one that prints
            lines (:class:`tpo.progress.LineProgressBar`)."""
            from lightning.pytorch.callbacks import TQDMProgressBar

            from tpo.progress import LineProgressBar, is_terminal

            trainer = super().instantiate_trainer(**kwargs)
            if not is_terminal():
                trainer.callbacks[:] = [LineProgressBar() if type(c) is TQDMProgressBar else c
                                        for c in trainer.callbacks]
            return trainer

    return DeferredSaveConfig, TPOLightningCLI


def __getattr__(name: str) -> Any:
    if name in ("DeferredSaveConfig", "TPOLightningCLI"):
        return _lightning_classes()[name == "TPOLightningCLI"]
    raise AttributeError(f"module 'tpo.cli' has no attribute {name!r}")


def lightning_main(argv: list[str]) -> int:
    """``tpo fit|validate|test|predict --config cfg.yaml [...]`` through LightningCLI, with the
    omegaconf parser mode (``${...}`` interpolation inside a config).

    Before anything is built, a config-file key the parser would silently drop (a misspelt key
    whose value is an empty mapping) and a dataset path that does not exist are errors. The
    run's ``config.yaml`` replaces the previous one only once the run is under way (see
    :class:`DeferredSaveConfig`).
    """
    from tpo.datamodules import MultiTaskDataModule
    from tpo.module import TPOModule

    deferred_save_config, cli = _lightning_classes()
    cli(
        TPOModule,
        MultiTaskDataModule,
        args=argv,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_callback=deferred_save_config,
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
        if command == "ablate":
            from tpo.ablate import ablate_main

            return ablate_main(rest)
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
