"""Ramp filters for filtered backprojection: band-limited ramp kernel and apodisation.

The ramp kernel is built in the spatial domain (Kak & Slaney's band-limited ramp,
sampled at the detector pitch), then moved to the frequency domain and multiplied by an
apodisation window. Compared with sampling ``|f|`` directly, this gives the correct,
slightly positive response at DC, so a uniform object has no offset. Rows are
zero-padded to at least twice their length, so the convolution is linear (no
wrap-around between the two detector edges).
"""

from __future__ import annotations

import math

import torch

from nfrecon.errors import InputError

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")


def _window(name: str, x: torch.Tensor) -> torch.Tensor:
    """Apodisation window at ``x`` = frequency / cutoff frequency, for 0 <= x <= 1."""
    if name == "ram-lak":
        return torch.ones_like(x)
    if name == "shepp-logan":
        return torch.sinc(x / 2)
    if name == "cosine":
        return torch.cos(math.pi * x / 2)
    if name == "hamming":
        return 0.54 + 0.46 * torch.cos(math.pi * x)
    return 0.5 + 0.5 * torch.cos(math.pi * x)  # hann


def check_filter(name: str, cutoff: float) -> None:
    """Raise InputError unless ``name`` is one of FILTERS and 0 < cutoff <= 1."""
    if name not in FILTERS:
        raise InputError(f"filter: unknown filter {name!r}, choose one of {', '.join(FILTERS)}")
    if not (isinstance(cutoff, (int, float)) and 0.0 < float(cutoff) <= 1.0):
        raise InputError(f"cutoff: must be a fraction of the Nyquist frequency in (0, 1], got {cutoff!r}")


def padded_length(n: int) -> int:
    """FFT length for rows of ``n`` pixels: the smallest power of two >= 2 n."""
    return 1 << max(1, (2 * int(n) - 1).bit_length())


def ramp_response(
    n_fft: int, name: str = "ram-lak", cutoff: float = 1.0, dtype=torch.float32, device=None
) -> torch.Tensor:
    """Real frequency response (n_fft // 2 + 1,) of the apodised ramp, for unit pixel pitch.

    The spatial kernel is h[0] = 1/4, h[n] = -1/(pi n)^2 for odd n, 0 for even n != 0
    (pixel pitch 1; divide the filtered rows by the pitch in mm to get 1/mm). The window
    is applied at ``x = f / (cutoff * f_nyquist)`` and the response is zero for x > 1.
    """
    check_filter(name, cutoff)
    n = torch.arange(n_fft, dtype=torch.float64, device=device)
    lag = torch.where(n <= n_fft // 2, n, n - n_fft)
    odd = lag.remainder(2) == 1
    kernel = torch.where(odd, -1.0 / (math.pi * torch.where(odd, lag, 1.0)) ** 2, torch.zeros_like(lag))
    kernel[0] = 0.25
    response = torch.fft.rfft(kernel).real
    x = torch.arange(response.numel(), dtype=torch.float64, device=device) / (n_fft / 2) / float(cutoff)
    window = torch.where(x <= 1.0, _window(name, x.clamp(max=1.0)), torch.zeros_like(x))
    return (response * window).to(dtype)


def ramp_filter_rows(rows: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """Convolve the last axis of ``rows`` (..., nu) with the ramp of ``ramp_response``.

    Rows are zero-padded to ``2 * (response.numel() - 1)`` samples; units are those of
    ``rows`` per pixel (divide by the pitch in mm for 1/mm).
    """
    n_fft = 2 * (response.numel() - 1)
    spectrum = torch.fft.rfft(rows, n=n_fft, dim=-1) * response
    return torch.fft.irfft(spectrum, n=n_fft, dim=-1)[..., : rows.shape[-1]]
