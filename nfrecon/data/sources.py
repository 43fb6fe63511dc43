"""Which real CT a simulated scan was made from, so that a test CT and every scan made from
it (its augmented variants included) can be kept out of a pretraining population.

A scan simulated from a CT file (``nfrecon simulate``, ``nfrecon bench``, the augmented scans
of ``nfrecon make-dataset``) records ``metadata["source_ct"] = {"name": ..., "sha256": ...}``:
the file (or DICOM folder) name and :func:`nfrecon.data.volumes.volume_sha256` of its bytes.
Identity is the digest, not the name: a CT copied under another name is still the same CT.
Procedural patients and the built-in phantom carry no ``source_ct``.
"""

from __future__ import annotations

from pathlib import Path

from nfrecon.data.volumes import volume_sha256
from nfrecon.errors import InputError

SOURCE_CT = "source_ct"


def ct_source(path) -> dict:
    """The ``source_ct`` record of the CT at ``path``: {"name", "sha256"}."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    return {"name": path.name, "sha256": volume_sha256(path)}


def source_sha256(metadata: dict) -> str | None:
    """The digest of the real CT a scan's ``metadata`` says it was made from (None: none recorded)."""
    record = metadata.get(SOURCE_CT)
    return record.get("sha256") if isinstance(record, dict) else None
