"""Published results of the CondCBNT-like protocol, to print beside the measured ones.

Source: Papa et al., "Neural Modulation Fields for Conditional Cone Beam Neural
Tomography" (CondCBNT), arXiv:2307.08351, 2023, results table (as quoted in DESIGN.md
§4): 256^3 volumes at 2 mm, 400 views over 205 degrees (50 views: every 8th), Poisson
noise with 1e5 photons per pixel, mean over their test patients, GPU timings. PSNR uses
the ground truth's maximum as data range. Only the noisy conditions are quoted here.
"""

from __future__ import annotations

SOURCE = ("Papa et al. 2023 (CondCBNT, arXiv:2307.08351), 256^3 at 2 mm, 1e5 photons/pixel, "
          "mean over their test patients, GPU")

# (method, views, noise) -> (PSNR dB, SSIM, seconds per volume or None)
PUBLISHED: dict[tuple[str, int, str], tuple[float, float, float | None]] = {
    ("fdk", 50, "noisy"): (14.54, 0.20, None),
    ("iterative", 50, "noisy"): (26.36, 0.70, 7.7),
    ("naf", 50, "noisy"): (22.83, 0.58, 161.0),
    ("condcbnt", 50, "noisy"): (28.31, 0.80, 124.0),
    ("naf", 400, "noisy"): (25.93, 0.75, 275.0),
    ("condcbnt", 400, "noisy"): (29.89, 0.86, 763.0),
}
