"""Products service: the catalogue and the stock, the only writer of stock levels."""
