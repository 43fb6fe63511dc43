"""``nfrecon import-rtk``: a scan file from an RTK projection stack and its geometry XML."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nfrecon.cli.common import parse
from nfrecon.data.rtk_import import check_import_options, read_rtk_scan
from nfrecon.data.scan import save_scan
from nfrecon.fsutil import check_output_file

DESCRIPTION = """Import a projection stack and geometry written by RTK (rtksimulatedgeometry,
rtk::ThreeDCircularProjectionGeometryXMLFileWriter) as an nfrecon scan file, for fdk,
iterative and fit. The stack (.mha, .mhd, .nrrd; [view, v, u], identity direction) holds
line integrals, or raw intensities with --i0 (converted to -ln(I/I0)). RTK files carry no
reconstruction grid: by default the scan gets one centred on the isocentre, with voxels of
the detector pixel size at the isocentre, holding the field-of-view cylinder (its diameter
and the detector height at the isocentre); --size and --voxel-mm set it. The grid chosen is
recorded in the scan's metadata (nfrecon info shows it)."""


@dataclass
class ImportRtkArgs:
    projections: Path
    """RTK projection stack (.mha, .mhd, .nrrd): line integrals, or raw intensities with --i0."""
    geometry: Path
    """RTK geometry XML (RTKThreeDCircularGeometry), one <Projection> per view of the stack."""
    out: Path = Path("scan.h5")
    """Scan file to write (HDF5)."""
    i0: float | None = None
    """The stack holds raw intensities with this unattenuated intensity I0 (converted to
    -ln(I/I0); recorded as the scan's photons per pixel). Default: line integrals, noise unknown."""
    size: int | None = None
    """Reconstruction grid of N^3 voxels (default: the field of view at the pixel size at the isocentre)."""
    voxel_mm: float | None = None
    """Voxel size of the reconstruction grid in mm (default: the detector pixel size at the isocentre)."""

    def __post_init__(self):
        check_import_options(self.i0, self.size, self.voxel_mm)


def main(argv: list[str], prog: str) -> int:
    args = parse(ImportRtkArgs, argv, prog, DESCRIPTION)
    check_output_file(args.out)
    scan = read_rtk_scan(args.projections, args.geometry, i0=args.i0, size=args.size, voxel_mm=args.voxel_mm)
    save_scan(scan, args.out)
    print(f"scan: {args.out} ({scan.geom.describe()})")
    print(f"reconstruction grid: {scan.metadata['recon_grid']}")
    return 0
