"""The shop's processes, named once: every list of services elsewhere is read from here.

``SERVICES`` are the RPC services, each with a database of its own (``shop_<service>``),
a PostgreSQL role of its own and an RPC queue ``rpc-<service>``; the ``GATEWAY`` is the
HTTP front, which has neither. ``SERVICE_CLASSES`` is what ``nameko run`` starts for each
process kind (``module:Class``: nameko then takes that class and nothing else from the
module).

No import here but the standard library: scripts, the bench and the tests read it
without loading nameko.
"""

SERVICES = ("customers", "products", "orders")
GATEWAY = "gateway"
PROCESS_KINDS = (GATEWAY, *SERVICES)

SERVICE_CLASSES = {
    "customers": "customers.service:CustomersService",
    "products": "products.service:ProductsService",
    "orders": "orders.service:OrdersService",
    GATEWAY: "gateway.service:GatewayService",
}
