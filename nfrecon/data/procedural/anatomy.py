"""The random anatomy of one procedural patient, in the patient frame (z, w, u) mm.

:class:`Anatomy` draws every parameter (body and walls, tissue HU, lungs and diaphragm,
spine, heart and great vessels, abdominal organs, vessel trees, ribs, lesions, gas) from
one generator, in a fixed order (the order is part of the seed -> patient mapping), and
gives the signed distances (mm) of its shapes.
"""

from __future__ import annotations

import math

import numpy as np

from nfrecon.data.procedural.config import BODY_DRIFT_MM, BODY_Z_VARIATION, IntRange, PatientConfig, Range
from nfrecon.data.procedural.shapes import Waves, draw_count, ellipsoid_sd, local_coords, rotation, uniform


class Anatomy:
    """All random parameters of one patient in the patient frame (mm), and its shapes' signed distances."""

    def __init__(self, rng: np.random.Generator, cfg: PatientConfig, half_width: float, aspect: float,
                 z_visible: Range):
        self.cfg = cfg
        self.z_visible = z_visible
        U = lambda r: uniform(rng, r)
        # body and walls
        self.a0, self.b0 = half_width, half_width * aspect
        self.width_z = Waves.draw(rng, 3, 1, (150.0, 500.0), BODY_Z_VARIATION)
        self.depth_z = Waves.draw(rng, 3, 1, (150.0, 500.0), BODY_Z_VARIATION)
        self.drift_u = Waves.draw(rng, 2, 1, (200.0, 600.0), BODY_DRIFT_MM)
        self.drift_w = Waves.draw(rng, 2, 1, (200.0, 600.0), BODY_DRIFT_MM)
        self.fat = U(cfg.fat_fraction) * self.b0
        self.muscle = U(cfg.muscle_fraction) * self.b0
        self.cw = 0.5 * self.muscle  # the cavity sits anterior: the back wall is thicker
        L = self.L = self.a0 - self.fat - self.muscle  # cavity half-width (size unit)
        M = self.M = self.b0 - self.fat - 2.0 * self.muscle  # the cavity's back wall is at w = -M
        k = self.k = L / 140.0
        size = lambda: U(cfg.organ_scale)
        # tissue values
        self.lung_hu, self.fat_hu, self.muscle_hu = U(cfg.lung_hu), U(cfg.fat_hu), U(cfg.muscle_hu)
        self.soft_hu = U((20.0, 40.0))
        self.visceral_fat = U((0.15, 0.5))
        contrast = rng.uniform() < cfg.contrast_probability
        self.blood_hu = U((150.0, 280.0)) if contrast else U((35.0, 50.0))
        self.myocardium_hu = U((35.0, 55.0))
        self.liver_hu = U(cfg.liver_hu) + (U((30.0, 60.0)) if contrast else 0.0)
        self.spleen_hu = U((40.0, 55.0)) + (U((40.0, 80.0)) if contrast else 0.0)
        self.kidney_hu = U(cfg.kidney_hu) + (U((80.0, 150.0)) if contrast else 0.0)
        self.stomach_hu = U((15.0, 35.0))
        self.cancellous_hu, self.cortical_hu = U(cfg.cancellous_hu), U(cfg.cortical_hu)
        self.rib_hu, self.cartilage_hu = U(cfg.rib_hu), U((80.0, 150.0))
        self.disc_hu, self.canal_hu = U((60.0, 100.0)), U((5.0, 30.0))
        # lungs and diaphragm
        self.lung_top = U(cfg.lung_height_mm) * U((0.9, 1.1)) * max(k, 0.8)
        self.dome_left = -U((10.0, 25.0))
        self.dome_depth = U((50.0, 80.0)) * k
        self.apex_depth = U((30.0, 50.0)) * k
        self.mediastinum = U((0.16, 0.24)) * L
        # spine (vertebral body half-axes grow caudally), its curvature
        self.vb_u = 0.13 * L * U((0.9, 1.1))
        self.vb_w = 0.8 * self.vb_u
        self.vb_wc = self.cw - M + 1.3 * self.vb_w
        self.spine_curve = Waves.draw(rng, 1, 1, (500.0, 800.0), U((0.0, 8.0)))
        self.canal_r = 0.055 * L
        self.period = U((24.0, 30.0)) * max(k, 0.8)
        self.disc = U((5.0, 8.0)) * max(k, 0.8)
        self.phase = U((0.0, self.period))
        self.cortex = U((1.2, 2.0))
        # heart and great vessels
        self.heart_c = np.array([U((35.0, 50.0)) * k, self.cw + 0.3 * M, -U((0.12, 0.2)) * L])
        self.heart_axes = np.array([0.5, 0.4, 0.36]) * L * size()
        axis = np.array([-0.45, 0.5, -0.75]) + rng.normal(scale=0.1, size=3)
        self.heart_rot = rotation(axis, U((0.0, np.pi)))
        self.aorta_r = U((11.0, 15.0)) * k
        self.trachea_r = U((8.0, 11.0)) * k
        self.hilum_z = U((0.42, 0.52)) * self.lung_top
        self.hilum_w = self.cw + U((-0.1, 0.05)) * M
        self.hila = [np.array([self.hilum_z, self.hilum_w, side * (self.mediastinum + 12.0 * k)]) for side in (1, -1)]
        # abdominal organs: (centre, half-axes (mm), rotation)
        self.liver = (np.array([-U((40.0, 60.0)) * k, self.cw, 0.25 * L]),
                      np.array([0.75 * L, 0.85 * M, 0.65 * L]) * size(), np.eye(3))
        self.spleen = (np.array([-U((30.0, 60.0)) * k, self.cw - 0.45 * M, -0.62 * L]),
                       np.array([0.38 * L, 0.32 * M, 0.17 * L]) * size(), np.eye(3))
        self.stomach = (np.array([-U((30.0, 50.0)) * k, self.cw + 0.3 * M, -0.35 * L]),
                        np.array([0.30 * L, 0.30 * M, 0.28 * L]) * size(), np.eye(3))
        self.stomach_gas = rng.uniform() < 0.7
        self.kidneys = []
        for side in (1, -1):
            kz = -U((90.0, 120.0)) * k - (U((5.0, 20.0)) * k if side > 0 else 0.0)
            centre = np.array([kz, self.vb_wc + 5.0 * k, side * (self.vb_u + 0.3 * L)])
            rot = rotation([1.0, -0.15, -0.2 * side], side * math.radians(U((15.0, 35.0))))
            self.kidneys.append((centre, np.array([0.38, 0.2, 0.16]) * L * size(), rot))
        # stochastic structures: vessel trees, ribs, lesions, gas
        self.vessels = self._vessel_trees(rng, U)
        self.ribs = self._ribs(rng, U)
        self.sternum = (U((-5.0, 25.0)) * k, self.lung_top - U((20.0, 40.0)) * k, 0.11 * L, U((5.0, 7.0)) * k)
        self.lung_lesions = self._lesions(rng, cfg.lung_nodules, self._lung_box(), self._inside_lung,
                                          self._lung_lesion_value)
        self.liver_lesions = self._lesions(rng, cfg.liver_lesions, self._box(self.liver), self._inside_liver,
                                           self._liver_lesion_value)
        self.gas = self._gas_pockets(rng, U)
        self.fine_fat = Waves.draw(rng, 8, 3, (25.0, 60.0), 1.0)
        self.smooth = Waves.draw(rng, 6, 3, (60.0, 200.0), cfg.smooth_hu)

    # ------------------------------------------------------------------ body and cavity
    def _ellipse(self, z, w, u, shrink_u: float, shrink_w: float, shift_w: float = 0.0):
        a = self.a0 * (1 + self.width_z(z)) - shrink_u
        b = self.b0 * (1 + self.depth_z(z)) - shrink_w
        return ellipsoid_sd((u - self.drift_u(z), w - self.drift_w(z) - shift_w), (a, b))

    def body_sd(self, z, w, u):
        return self._ellipse(z, w, u, 0.0, 0.0)

    def wall_sd(self, z, w, u):
        """Inner face of the subcutaneous fat (outer face of the muscle wall)."""
        return self._ellipse(z, w, u, self.fat, self.fat)

    def cavity_sd(self, z, w, u):
        return self._ellipse(z, w, u, self.fat + self.muscle, self.fat + 1.5 * self.muscle, self.cw)

    def cavity_axes(self, z):
        return (self.a0 * (1 + self.width_z(z)) - self.fat - self.muscle,
                self.b0 * (1 + self.depth_z(z)) - self.fat - 1.5 * self.muscle)

    def dome(self, w, u):
        """z (mm) of the diaphragm above (w, u): two domes, the right one higher."""
        top = self.dome_left + (0.0 - self.dome_left) / (1 + np.exp(-u / (15.0 * self.k)))
        r2 = (((np.abs(u) - 0.35 * self.L) / (0.65 * self.L)) ** 2
              + ((w - self.cw + 0.1 * self.M) / (0.95 * self.M)) ** 2)
        return top - self.dome_depth * r2

    def spine_w(self, z):
        return self.vb_wc + self.spine_curve(z)

    def spine_scale(self, z):
        """Vertebral size factor: smaller at the top of the thorax, larger in the lumbar spine."""
        return 1 + 0.25 * np.clip(-z / 250.0, 0, 1) - 0.15 * np.clip(z / self.lung_top - 0.5, 0, 1)

    def lung_sd(self, z, w, u):
        top = self.lung_top - self.apex_depth * (((np.abs(u) - 0.45 * self.L) / (0.45 * self.L)) ** 2
                                                 + ((w - self.cw + 0.1 * self.M) / (0.8 * self.M)) ** 2)
        spine = (1.15 * self.vb_u * self.spine_scale(z) + 6.0) - np.sqrt(u ** 2 + (w - self.spine_w(z)) ** 2)
        sd = np.maximum(self.cavity_sd(z, w, u) + 2.0, self.dome(w, u) - z)
        sd = np.maximum(sd, z - top)
        sd = np.maximum(sd, -ellipsoid_sd((u, w - self.cw - 0.05 * self.M), (self.mediastinum, 0.95 * self.M)))
        return np.maximum(sd, spine)

    def heart_sd(self, z, w, u):
        sd = ellipsoid_sd(local_coords(self.heart_rot, self.heart_c, z, w, u), self.heart_axes)
        return np.maximum(sd, self.cavity_sd(z, w, u) + 2.0)

    def organ_sd(self, organ, z, w, u):
        """An abdominal organ: its ellipsoid within the cavity and below the diaphragm."""
        centre, axes, rot = organ
        sd = ellipsoid_sd(local_coords(rot, centre, z, w, u), axes)
        return np.maximum(np.maximum(sd, self.cavity_sd(z, w, u) + 1.0), z - self.dome(w, u) + 3.0)

    # ------------------------------------------------------------------ random structures
    def _box(self, organ, margin: float = 0.0):
        centre, axes, _ = organ
        r = float(np.max(axes)) + margin
        return centre - r, centre + r

    def _lung_box(self):
        lo = np.array([self.dome_left - self.dome_depth, self.cw - self.M, -self.L * 1.1])
        hi = np.array([self.lung_top, self.cw + self.M, self.L * 1.1])
        return lo, hi

    def _inside_lung(self, p, r):
        return (self.lung_sd(*p) < -r) & (self.heart_sd(*p) > r)

    def _inside_liver(self, p, r):
        return self.organ_sd(self.liver, *p) < -r

    def _lung_lesion_value(self, rng):
        kind = rng.uniform()
        if kind < 0.7:
            return uniform(rng, (-50.0, 80.0))  # solid
        if kind < 0.9:
            return uniform(rng, (-650.0, -350.0))  # ground glass
        return uniform(rng, (300.0, 700.0))  # calcified

    def _liver_lesion_value(self, rng):
        return self.liver_hu + (-uniform(rng, (30.0, 60.0)) if rng.uniform() < 0.6 else uniform(rng, (25.0, 50.0)))

    def _candidates(self, rng, box, n: int = 256) -> np.ndarray:
        """``n`` uniform points (3, n) in ``box`` limited to the visible z range (none when they miss it)."""
        lo, hi = np.array(box[0], dtype=np.float64), np.array(box[1], dtype=np.float64)
        lo[0], hi[0] = max(lo[0], self.z_visible[0]), min(hi[0], self.z_visible[1])
        pts = rng.uniform(size=(3, n))
        return lo[:, None] + pts * (hi - lo)[:, None] if hi[0] > lo[0] else np.zeros((3, 0))

    def _lesions(self, rng, count: IntRange, box, inside, value) -> list:
        """Lobulated blobs: [(centre, radius, value)] of 1-3 overlapping spheres each, inside an organ."""
        out = []
        for _ in range(draw_count(rng, count)):
            r = uniform(rng, self.cfg.lesion_radius_mm)
            p = self._candidates(rng, box)
            ok = np.flatnonzero(inside(p, r))
            if len(ok) == 0:
                continue
            c = p[:, ok[0]]
            v = value(rng)
            out.append((c, r, v))
            for _ in range(int(rng.integers(0, 3))):
                d = rng.normal(size=3)
                out.append((c + d / np.linalg.norm(d) * r * uniform(rng, (0.4, 0.7)), r * uniform(rng, (0.5, 0.8)), v))
        return out

    def _gas_pockets(self, rng, U) -> list:
        out = []
        box = (np.array([-300.0 * self.k, self.cw - 0.2 * self.M, -0.7 * self.L]),
               np.array([-60.0 * self.k, self.cw + self.M, 0.7 * self.L]))
        for _ in range(draw_count(rng, self.cfg.gas_pockets)):
            axes = np.array([U((6.0, 20.0)), U((5.0, 12.0)), U((6.0, 18.0))]) * self.k
            p = self._candidates(rng, box)
            r = float(axes.max())
            ok = (self.cavity_sd(*p) < -r) & (self.organ_sd(self.liver, *p) > r)
            for kidney in self.kidneys:
                ok &= self.organ_sd(kidney, *p) > r
            idx = np.flatnonzero(ok)
            if len(idx):
                out.append((p[:, idx[0]], axes))
        return out

    def _vessel_trees(self, rng, U) -> list:
        """Capsules (p0, p1, r0, r1) of the pulmonary vessels: from each hilum, 8 mains that branch in two.

        Mains head for well-spread points of the lung (farthest-point picks); each child
        direction is the best of three random turns (its end deepest inside the lung), which
        makes the tree fill the lung instead of leaving it.
        """
        segments = []
        lo, hi = self._lung_box()
        for hilum, side in zip(self.hila, (1, -1)):
            box_lo, box_hi = lo.copy(), hi.copy()
            if side > 0:
                box_lo[2] = self.mediastinum
            else:
                box_hi[2] = -self.mediastinum
            pts = box_lo[:, None] + rng.uniform(size=(3, 512)) * (box_hi - box_lo)[:, None]
            pool = pts[:, self.lung_sd(*pts) < -10.0].T
            targets = []
            while len(targets) < 8 and len(pool):
                far = 0 if not targets else int(np.argmax(np.min(
                    [np.linalg.norm(pool - t, axis=1) for t in targets], axis=0)))
                targets.append(pool[far])
            if not targets:
                continue
            start = np.asarray(targets) - hilum
            length = 0.45 * np.linalg.norm(start, axis=1)
            d = start / np.linalg.norm(start, axis=1, keepdims=True)
            p = np.repeat(hilum[None], len(d), axis=0)
            r = rng.uniform(3.5, 5.5, size=len(d)) * self.k
            for gen in range(self.cfg.vessel_generations + 1):  # one generation of all branches at a time
                q = p + d * length[:, None]
                segments += [(a, b, float(ra), 0.85 * float(ra)) for a, b, ra in zip(p, q, r)]
                if gen == self.cfg.vessel_generations:
                    break
                n = 2 * len(d)  # two children per branch, each the best of 3 random turns
                d, q, length, r = (np.repeat(x, 2, axis=0) for x in (d, q, length, r))
                v = rng.normal(size=(n, 3, 3))
                v -= np.einsum("nkj,nj->nk", v, d)[..., None] * d[:, None]
                v /= np.linalg.norm(v, axis=2, keepdims=True)
                a = np.radians(rng.uniform(20.0, 45.0, size=(n, 3, 1)))
                dirs = np.cos(a) * d[:, None] + np.sin(a) * v
                length = length * rng.uniform(0.65, 0.85, size=n)
                ends = q[:, None] + length[:, None, None] * dirs
                best = np.argmin(self.lung_sd(*ends.reshape(-1, 3).T).reshape(n, 3), axis=1)
                p, d, r = q, dirs[np.arange(n), best], 0.75 * r
        return segments

    def _ribs(self, rng, U) -> list:
        """Capsules (p0, p1, r0, r1, value) of 12 rib pairs with their costal cartilage."""
        top = self.lung_top - U((5.0, 20.0)) * self.k
        bottom = -U((60.0, 90.0)) * self.k
        drop = U((60.0, 110.0)) * self.k
        radius = U((3.5, 5.0)) * self.k
        out = []
        for side in (1, -1):
            for i in range(12):
                z_att = top + (bottom - top) * i / 11
                a_end, _ = self.cavity_axes(np.float64(z_att))
                if i < 7:
                    end, cart = math.pi - math.asin(min(0.95, (0.11 * self.L + 8.0) / float(a_end))), 2.35
                elif i < 10:
                    end, cart = U((2.3, 2.6)), 2.1
                else:
                    end, cart = U((1.6, 2.0)), 9.0
                theta = np.linspace(0.25, end, 12)
                z = z_att - drop * (theta - 0.25) / (math.pi - 0.25)
                a, b = self.cavity_axes(z)
                ring_u = self.drift_u(z) + side * (a + 0.45 * self.muscle) * np.sin(theta)
                ring_w = self.cw + self.drift_w(z) - (b + 0.45 * self.muscle) * np.cos(theta)
                head = np.array([z_att + 5.0, float(self.spine_w(np.float64(z_att))) - 0.3 * self.vb_w,
                                 side * (self.vb_u + 3.0)])
                pts = [head] + [np.array(p) for p in zip(z, ring_w, ring_u)]
                for j in range(len(pts) - 1):
                    value = self.cartilage_hu if j > 0 and theta[j - 1] > cart else self.rib_hu
                    out.append((pts[j], pts[j + 1], radius, radius, value))
        return out

