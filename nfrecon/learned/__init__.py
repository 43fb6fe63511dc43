"""Learned reconstructors trained across patients: a reversible learned primal-dual (LIRE-style)
and FDK + 3D U-Net post-processing; training (:mod:`.trainer`), model files (:mod:`.modelfile`)
and reconstruction of a scan (:mod:`.recon`)."""
