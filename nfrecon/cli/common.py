"""Helpers shared by the subcommands: tyro parsing, device choice, and the options and help
text of the commands that take presets (fit, pretrain)."""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from nfrecon.devices import resolve_device
from nfrecon.errors import InputError, recording_input_errors
from nfrecon.fit import presets

__all__ = ["RunOptions", "parse", "preset_help", "resolve_device"]


def parse(cls, argv: list[str], prog: str, description: str, default=None):
    """Parse ``argv`` into dataclass ``cls`` with tyro (``--help`` prints and exits 0).

    A config's own check (``__post_init__``) that refuses a value raises its InputError
    (one line, exit 2 in the CLI) instead of tyro's boxed report of it.
    """
    kwargs = {"default": default} if default is not None else {}
    errors, replaced = io.StringIO(), False
    with recording_input_errors() as refused:
        try:
            with contextlib.redirect_stderr(errors):
                return tyro.cli(cls, args=argv, prog=prog, description=description, **kwargs)
        except SystemExit as exc:
            replaced = exc.code == 2 and bool(refused)
            if replaced:
                raise InputError(str(refused[-1])) from None
            raise
        finally:
            if not replaced:
                sys.stderr.write(errors.getvalue())


@dataclass
class RunOptions:
    """How a run starts: preset, extra config, resume or start over."""

    preset: str = presets.DEFAULT_PRESET
    """Preset from configs/ (see above), or 'none' for the built-in defaults."""
    config: Path | None = None
    """YAML config (e.g. an earlier run's config.yaml) applied over the preset."""
    resume: bool = False
    """Continue the run in --out from its checkpoint (bit for bit)."""
    overwrite: bool = False
    """Start over in an --out that holds an earlier run."""

    @classmethod
    def given(cls, choices: dict[str, str]) -> RunOptions:
        """The options with the ``--preset``/``--config`` of ``choices`` (see
        :func:`nfrecon.fit.presets.layer_choices`) as defaults, so that ``--help`` shows them."""
        config = choices.get("config")
        return cls(preset=choices.get("preset", cls.preset), config=None if config is None else Path(config))


def preset_help(names: list[str], auto: str) -> str:
    """The paragraph of a command's help that lists presets ``names`` with their descriptions;
    ``auto``: what the preset 'auto' stands for in this command."""
    lines = [f"  {name}: {text}" if (text := presets.description(name)) else f"  {name}" for name in names]
    return "\n".join(["Presets (--preset NAME; configs/*.yaml):", *lines, f"  auto: {auto}",
                      "  none: the built-in defaults"])
