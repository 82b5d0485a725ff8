"""Run under torchrun by test_torchrun.py: ``compress(recipe, out)`` with every rank interrupted (as by
Ctrl-C) after ``step`` optimizer steps of the stage tagged ``tag``; the test then resumes the run."""

from __future__ import annotations

import dataclasses
import sys

from distillprune.pipeline import compress
from distillprune.pipeline import state as state_mod
from distillprune.recipes import load_recipe


def main(recipe: str, out: str, tag: str, step: int) -> None:
    real_fit = state_mod.fit
    seen = [0]

    def fit(*args, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs["run"].desc.endswith(tag):

            def stop(_model):  # type: ignore[no-untyped-def]
                seen[0] += 1
                if seen[0] == step:
                    raise KeyboardInterrupt

            kwargs["run"] = dataclasses.replace(kwargs["run"], on_step=stop)
        return real_fit(*args, **kwargs)

    state_mod.fit = fit
    compress(load_recipe(recipe), out, quiet=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
