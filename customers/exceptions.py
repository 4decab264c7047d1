"""The errors the customers service raises. Defined in the contract module
:mod:`common.errors` (shared by every service and the gateway); re-exported here."""

from common.errors import CustomerNotFound, EmailAlreadyRegistered

__all__ = ["CustomerNotFound", "EmailAlreadyRegistered"]
