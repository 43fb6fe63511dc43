"""``python -m nfrecon`` runs the command line (also what torchrun launches)."""

from nfrecon.cli import console

console()
