"""Model loading by role. A role's spec is a hub id or a local folder (production), or
``tiny-random``: a random-init model built from a small config with the real library class, the
embedded default on a machine without weights. One module per role; shared helpers in ``tiny``."""
