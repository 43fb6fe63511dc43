"""Pretraining of a CondCBNT backbone jointly with one modulation field per training scan.

Each step, every process draws one of *its* scans at random and fits the shared backbone
and that scan's modulation field to it: on projections (rays through the scan's views, MSE
on line integrals, as in the paper) or on the ground truth (``data="voxels"``: mu at random
voxel centres, MSE; faster, needs ``gt`` in the scans). Scans keep their own geometry and
grid: each scan's box maps to the backbone's unit cube.

Scale-out (PyTorch DDP, NCCL on GPUs with one per process, ``cuda:LOCAL_RANK``; gloo on
CPUs). Start N processes per machine with torchrun::

    torchrun --nproc-per-node 8 -m nfrecon pretrain --scans data/ --out runs/pre
    nfrecon pretrain --nproc 8 --scans data/ --out runs/pre      # the same, on one machine
    # several machines (run on each; the output folder must be on a shared file system):
    torchrun --nnodes 2 --node-rank R --master-addr HOST --master-port 29500 \\
        --nproc-per-node 8 -m nfrecon pretrain --scans data/ --out /shared/runs/pre
    # (or the elastic rendezvous: --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id JOB)

Outputs (rank 0 writes, atomically): ``config.yaml`` (resolved), ``history.csv``,
``summary.json``, ``tb/``, and every ``checkpoint_every`` steps, at the end and on
Ctrl-C/SIGTERM: ``modulations-<step>/<index>.pt`` (written by the rank owning the scan),
``checkpoint.pt`` and ``backbone.pt`` (what ``nfrecon fit --method condcbnt --backbone``
takes). ``--resume`` restores the step, backbone, every modulation and all Adam states
exactly; with the same number of processes the continuation is bit for bit that of the
uninterrupted run.

The modules, one job each:

- :mod:`~nfrecon.fit.pretrain.scans`: resolving ``--scans``, reading and sharding the scans
  across ranks, the shared attenuation range;
- :mod:`~nfrecon.fit.pretrain.targets`: the two training targets (projections, voxels);
- :mod:`~nfrecon.fit.pretrain.checkpoint`: checkpoint.pt, the modulations-<step>/ files,
  backbone.pt, resuming;
- :mod:`~nfrecon.fit.pretrain.history`: history.csv, summary.json, TensorBoard;
- :mod:`~nfrecon.fit.pretrain.trainer`: the models, a step (DDP, clipping, seeding) and
  the loop; :func:`run_pretrain`.
"""

from nfrecon.fit.pretrain.scans import resolve_scan_paths, training_population
from nfrecon.fit.pretrain.trainer import PretrainResult, run_pretrain

__all__ = ["PretrainResult", "resolve_scan_paths", "run_pretrain", "training_population"]
