"""Errors the customers service raises (imported by its callers so they deserialize)."""
from common.errors import Conflict, NotFound


class CustomerNotFound(NotFound):
    error = "customer_not_found"
    description = "No customer has this id."

    @classmethod
    def for_id(cls, customer_id):
        return cls(f"customer {customer_id} not found", {"customer_id": customer_id})


class EmailAlreadyRegistered(Conflict):
    error = "email_taken"
    description = "A customer with this email already exists."
