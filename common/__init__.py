"""Code shared by the shop services and the gateway: errors, RPC, database, schemas."""
