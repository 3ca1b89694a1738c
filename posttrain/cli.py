"""``posttrain RECIPE [--config FILE.yaml] [--field value ...]``.

Each recipe module defines ``SUMMARY``, a dataclass ``Config`` and ``run(config, flags)``; a few
commands (``annotate``) parse their own arguments through ``main(argv)``. Recipes are imported
only when used, so ``posttrain --help`` is instant. Bad input or config: exit code 2 and one line
``error: ...`` on stderr, no traceback.
"""

from __future__ import annotations

import importlib
import sys

from posttrain.errors import UserError

# name -> module; the module's SUMMARY is shown by `posttrain --help`
RECIPES = {
    "sft": "posttrain.recipes.sft",
    "rm": "posttrain.recipes.rm",
    "dpo": "posttrain.recipes.dpo",
    "kto": "posttrain.recipes.kto",
    "ppo": "posttrain.recipes.ppo",
    "rloo": "posttrain.recipes.rloo",
    "grpo": "posttrain.recipes.grpo",
    "reinforce": "posttrain.recipes.reinforce",
    "online-dpo": "posttrain.recipes.online_dpo",
    "best-of-n": "posttrain.recipes.best_of_n",
    "expert-iteration": "posttrain.recipes.expert_iteration",
    "cai": "posttrain.recipes.cai",
    "sample": "posttrain.recipes.sample",
    "judge": "posttrain.recipes.judge",
    "eval": "posttrain.recipes.eval",
    "plan": "posttrain.plan",
    "demo": "posttrain.recipes.demo",
    "plot": "posttrain.recipes.plot",
    "sweep": "posttrain.recipes.sweep",
    "annotate": "posttrain.annotate.cli",
}


def _available() -> dict[str, object]:
    found = {}
    for name, module in RECIPES.items():
        try:
            found[name] = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and (exc.name == module or module.startswith(exc.name + ".")):
                continue  # not built yet
            raise
    return found


def usage() -> str:
    lines = [
        "usage: posttrain RECIPE [--config FILE.yaml] [--field value ...] [--resume] [--overwrite]",
        "       posttrain RECIPE --help   (every field with its doc)",
        "",
        "recipes:",
    ]
    for name, module in _available().items():
        lines.append(f"  {name:<17} {getattr(module, 'SUMMARY', '')}")
    return "\n".join(lines)


def _quiet_libraries() -> None:
    """Our own progress bar is enough: silence the libraries' loading bars and info logs."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from posttrain import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    _quiet_libraries()
    try:
        if name not in RECIPES:
            raise UserError(f"unknown recipe {name!r} (see posttrain --help)")
        try:
            module = importlib.import_module(RECIPES[name])
        except ModuleNotFoundError as exc:
            if exc.name and RECIPES[name].startswith(exc.name):
                raise UserError(f"recipe {name!r} is not available in this version") from None
            raise
        if hasattr(module, "main"):
            return int(module.main(rest) or 0)
        if "-h" in rest or "--help" in rest:
            from posttrain.config import help_text

            print(help_text(module.Config, f"posttrain {name}", getattr(module, "SUMMARY", "")))
            return 0
        from posttrain.config import parse_args

        config, flags = parse_args(module.Config, rest)
        module.run(config, flags)
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
