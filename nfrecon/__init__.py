"""nfrecon: neural-field reconstruction for cone-beam CT.

Conventions (fixed, see README): millimetres, mu in 1/mm, volumes indexed [z, y, x] with
z the rotation axis, projection stacks [view, v, u] holding line integrals -ln(I/I0),
cone-beam geometry in the ASTRA/tomosipo cone_vec form with (z, y, x) vectors.
"""

__version__ = "0.1.0"
