"""Former home of the PCME++ loss oracle; it lives in :mod:`pcmekit.reference.losses`."""

from .reference.losses import pcmepp_loss_reference

__all__ = ["pcmepp_loss_reference"]
