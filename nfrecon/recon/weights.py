"""Projection weights for FDK: angular integration, Parker short-scan and cosine weights.

Angles are gantry angles in radians (counter-clockwise about z when seen from +z, as
:meth:`ConeGeometry.circular_angles`); views may come in any order. Each view stands for
the angular interval between the midpoints to its neighbours, so equally spaced views
cover ``n_views * step`` whether or not the last angle repeats the first
(``endpoint``): a 360-degree scan of ``n`` views covers exactly 360 degrees either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nfrecon.errors import InputError
from nfrecon.geometry.cone import ConeGeometry

TWO_PI = 2.0 * np.pi


@dataclass(frozen=True)
class AngularSampling:
    """How a set of views samples the circle.

    beta: (views,) rad, position of each view along the arc, from the arc's start edge
    (counter-clockwise); arc_step: (views,) rad, integration weight of each view on the arc
    (sum = ``coverage``); circle_step: (views,) rad, integration weight when the views are
    read as one closed circle (sum = 2 pi); coverage: rad, angular range covered;
    closed: True when no gap between neighbouring views exceeds twice the mean step
    2 pi / views (a full scan; a gap that large is read as the missing part of a short scan).
    """

    beta: np.ndarray
    arc_step: np.ndarray
    circle_step: np.ndarray
    coverage: float
    closed: bool


def angular_sampling(angles) -> AngularSampling:
    """Per-view angular positions and integration weights (see :class:`AngularSampling`)."""
    theta = np.mod(np.asarray(angles, dtype=np.float64), TWO_PI)
    n = theta.size
    if n < 2:
        raise InputError(f"angles: FDK needs at least 2 views, got {n}")
    order = np.argsort(theta, kind="stable")
    ts = theta[order]
    gaps = np.diff(np.append(ts, ts[0] + TWO_PI))  # gaps[k]: from sorted view k to k + 1 (cyclic)
    circle = np.empty(n)
    circle[order] = 0.5 * (gaps + np.roll(gaps, 1))

    big = int(np.argmax(gaps))  # the arc runs counter-clockwise from view big + 1 to view big
    arc = np.roll(np.arange(n), -(big + 1))
    pos = np.unwrap(ts[arc])  # increasing positions along the arc
    step = np.diff(pos)
    edges = np.concatenate([[pos[0] - step[0] / 2], (pos[1:] + pos[:-1]) / 2, [pos[-1] + step[-1] / 2]])
    beta, arc_step = np.empty(n), np.empty(n)
    beta[order[arc]] = pos - edges[0]
    arc_step[order[arc]] = np.diff(edges)
    closed = bool(gaps[big] <= 2 * TWO_PI / n)
    return AngularSampling(beta, arc_step, circle, float(edges[-1] - edges[0]), closed)


def fan_angles(geom: ConeGeometry) -> np.ndarray:
    """In-plane fan angle (rad) of each detector column per view: (views, cols).

    The angle from the central ray (source towards the rotation axis) to the ray through
    the column's centre in the central detector row, counter-clockwise about z.
    """
    nu = geom.det_shape[1]
    cols = geom.det[:, None, :] + (np.arange(nu) - (nu - 1) / 2)[None, :, None] * geom.u[:, None, :]
    ray = cols - geom.src[:, None, :]
    central = -geom.src[:, None, :]
    cross = central[..., 2] * ray[..., 1] - central[..., 1] * ray[..., 2]
    dot = central[..., 2] * ray[..., 2] + central[..., 1] * ray[..., 1]
    return np.arctan2(cross, dot)


def parker_weights(beta, gamma, coverage: float) -> np.ndarray:
    """Parker's short-scan redundancy weights (Parker 1982), (views, cols) in [0, 1].

    beta: (views,) rad from the arc start; gamma: (views, cols) in-plane fan angles
    (:func:`fan_angles`); coverage: arc length (rad). With ``delta = (coverage - pi) / 2``
    the ray (beta, gamma) and its conjugate (beta + pi + 2 gamma, -gamma) have weights
    summing to 1 whenever ``delta >= |gamma|`` (an arc of at least 180 degrees plus the
    fan angle). The weights are symmetric under reversing the direction of rotation.
    """
    b = np.asarray(beta, dtype=np.float64)[:, None]
    g = np.asarray(gamma, dtype=np.float64)
    delta = (coverage - np.pi) / 2
    w = np.ones(np.broadcast_shapes(b.shape, g.shape))
    rise = b < 2 * (delta - g)  # implies delta > gamma
    fall = b > np.pi - 2 * g  # with b <= coverage, implies delta > -gamma
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.sin(np.pi / 4 * b / (delta - g)) ** 2
        down = np.sin(np.pi / 4 * (np.pi + 2 * delta - b) / (delta + g)) ** 2
    w = np.where(rise, up, w)
    w = np.where(fall, down, w)
    return np.clip(w, 0.0, 1.0)


def cosine_weights(geom: ConeGeometry, views, device=None, dtype=torch.float32) -> torch.Tensor:
    """Flat-detector cosine pre-weights for ``views``: (len(views), rows, cols).

    The cosine of the angle between each pixel's ray and the detector normal:
    sdd / |pixel - source|, with sdd the perpendicular source-to-detector distance.
    """
    pix = geom.pixel_centers(views)
    dist = np.linalg.norm(pix - geom.src[views][:, None, None, :], axis=-1)
    return torch.as_tensor(geom.sdd[views][:, None, None] / dist, dtype=dtype, device=device)
