"""The release gate: a persisted, calibrated index of training vectors and ``check``.

``index build`` embeds a training set once and keeps its vectors with the
threshold ``audit`` would use (:class:`~trainleak.gate.index.Index`);
``check`` gives one verdict per image, or per person, against it
(:func:`~trainleak.gate.check.check`). Import from the submodules, or use
``trainleak.Index`` and ``trainleak.check``.
"""
