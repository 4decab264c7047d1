"""Customers service: who may place orders."""
