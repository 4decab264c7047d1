"""Every error a service can send the gateway, imported so Nameko deserializes each one
into its own class (see :mod:`common.errors`) rather than an opaque RemoteError (a 500).
gateway/tests/test_errors.py checks that nothing is missing here."""
from common.errors import *  # noqa: F401,F403
from common.idempotency import *  # noqa: F401,F403
from customers.exceptions import *  # noqa: F401,F403
from orders.exceptions import *  # noqa: F401,F403
from products.exceptions import *  # noqa: F401,F403
