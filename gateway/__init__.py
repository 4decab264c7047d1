"""HTTP gateway: maps the REST routes onto the services' RPCs; owns only HTTP concerns."""
