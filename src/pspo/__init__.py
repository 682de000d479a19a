"""PSPO / GR-PSPO: probability smoothing instead of ratio clipping in GRPO.

Modules: ``objectives`` (pure tensor losses), ``trainer`` (TRL GRPOTrainer subclass), ``train`` (the driver),
``benchmarks`` (the registry), ``layout`` (every output path), ``data``, ``grading``, ``rewards``, ``evaluation``,
``models``, ``report``; ``cli`` is the ``pspo`` command. ARCHITECTURE.md says which module owns what.
"""

__version__ = "0.1.0"
