"""Every error a service can send the gateway, imported so Nameko deserializes each one
into its own class (see :mod:`common.errors`) rather than an opaque RemoteError."""
from common.errors import *  # noqa: F401,F403
from customers.exceptions import *  # noqa: F401,F403
from orders.exceptions import *  # noqa: F401,F403
from products.exceptions import *  # noqa: F401,F403
