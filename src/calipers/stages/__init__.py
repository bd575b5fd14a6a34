"""ceci stages: thin adapters that read, configure, parallelise and write.

Importing this package registers every calipers stage with ceci.
"""
from calipers.stages.photoz import PZEstimate, PZInform
from calipers.stages.validation import ValidationGate

__all__ = ["PZInform", "PZEstimate", "ValidationGate"]
