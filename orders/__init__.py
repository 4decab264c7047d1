"""Orders service: takes an order, reserves its stock through products, records it."""
