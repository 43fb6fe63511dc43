"""TensorBoard logging that never stops a run: a no-op when tensorboard is missing."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

from nfrecon.geometry.volume import VolumeGeometry
from nfrecon.outputs.preview import orthogonal_panels, to_grey, window

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

_warned = False


class TBLogger:
    """Scalars and mid-slice images for TensorBoard, written under ``log_dir``.

    Wraps ``torch.utils.tensorboard.SummaryWriter``, imported on construction; when that
    import fails, one warning is issued (once per process) and every method does nothing.
    Usable as a context manager (closes on exit).
    """

    def __init__(self, log_dir: str | os.PathLike):
        global _warned
        self.log_dir = os.fspath(log_dir)
        self._writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            if not _warned:
                warnings.warn(f"tensorboard is not importable ({exc}); TensorBoard logging is off", stacklevel=2)
                _warned = True
            return
        self._writer = SummaryWriter(log_dir=self.log_dir)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def scalar(self, tag: str, value, step: int) -> None:
        """Log one number (a float or a one-element tensor) at ``step``."""
        if self._writer is not None:
            self._writer.add_scalar(tag, float(value), int(step))

    def slices(self, tag: str, volume, step: int, vol_geom: VolumeGeometry | None = None) -> None:
        """Log the axial, coronal and sagittal mid-slices of ``volume`` [z, y, x] as grey
        images ``tag/axial`` etc., oriented and resampled as in ``outputs.preview`` and
        windowed to the volume's 0.5..99.5 percentiles."""
        if self._writer is None:
            return
        lo, hi = window(volume)
        for name, image in orthogonal_panels(volume, vol_geom).items():
            self._writer.add_image(f"{tag}/{name}", to_grey(image, lo, hi), int(step), dataformats="HW")

    def close(self) -> None:
        """Flush and close the event file (idempotent)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
