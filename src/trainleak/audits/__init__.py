"""Audits: leakage, evidence, dedup, extraction, membership and inversion.

Each audit returns the common :class:`trainleak.result.Result`; the writers that turn
a result into files live in :mod:`trainleak.report`, above this package. The public
entry points are the ``trainleak.*`` functions (``tl.audit``, ``tl.dedup``, ...).
"""
