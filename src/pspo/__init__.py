"""PSPO / GR-PSPO: probability smoothing instead of ratio clipping in GRPO.

Modules: ``objectives`` (pure tensor losses), ``trainer`` (TRL GRPOTrainer subclass), ``data``, ``grading``,
``rewards``, ``evaluation``, ``models``, ``report``; ``cli`` is the ``pspo`` command.
"""

__version__ = "0.1.0"
