"""Run outputs: PNG previews, TensorBoard logging, progress bars."""

from nfrecon.outputs.preview import compare_preview, orthogonal_panels, save_preview
from nfrecon.outputs.progress import format_duration, progress
from nfrecon.outputs.tensorboard import TBLogger

__all__ = ["TBLogger", "compare_preview", "format_duration", "orthogonal_panels", "progress", "save_preview"]
