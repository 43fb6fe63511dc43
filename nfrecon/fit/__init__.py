"""Fitting fields to scans: per-scan NAF and CondCBNT test-time fitting, CondCBNT pretraining.

Per-scan fitting: :mod:`~nfrecon.fit.run` (the entry point, ``run_fit``) reads the scan
(:mod:`~nfrecon.fit.inputs`), sizes the field's range (:mod:`~nfrecon.fit.scan_stats`),
builds the model (:mod:`~nfrecon.fit.models`, backbones from :mod:`~nfrecon.fit.backbone`)
and runs :mod:`~nfrecon.fit.loop` (rays from :mod:`~nfrecon.fit.sampling`, step events and
learning rates from :mod:`~nfrecon.fit.schedule`, held-out stopping from
:mod:`~nfrecon.fit.stopping`). Pretraining: the package :mod:`~nfrecon.fit.pretrain`
(processes from :mod:`~nfrecon.fit.distributed`). Shared by both: configs
(:mod:`~nfrecon.fit.config`, presets :mod:`~nfrecon.fit.presets`), checkpoint files
(:mod:`~nfrecon.fit.checkpoint`) and Ctrl-C/SIGTERM handling (:mod:`~nfrecon.fit.signals`).
"""
