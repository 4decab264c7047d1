"""What every shop service with a database has in common."""

from typing import Any

from common.db import check_database
from common.logs import WorkerLog
from common.metrics import Metrics
from common.ops_http import OpsHttp
from common.rpc import rpc
from common.settings import Config, SettingsCheck
from common.tracing import Tracing


class ShopService:
    """Base of customers, products and orders: their config (checked at start:
    :class:`common.settings.SettingsCheck`), the one JSON log line per
    worker, metrics and traces of every worker, the operations listener (``/health``,
    ``/metrics`` on ``OPS_HTTP_ADDRESS``) and the two RPC probes. A subclass sets
    ``name`` and ``db``."""

    db: Any  # each service's Database
    config = Config()  # one read-only view of the container config for every worker
    settings_check = SettingsCheck()  # a malformed setting stops the start (common/settings.py)
    worker_log = WorkerLog()
    metrics = Metrics()
    tracing = Tracing()
    ops_http = OpsHttp()

    @rpc
    def ping(self) -> str:
        """Liveness probe: returns ``"pong"``; touches nothing."""
        return "pong"

    @rpc
    def check_ready(self) -> dict[str, str]:
        """Readiness probe: ``{"database": "ok"}`` once the database answers; raises
        ServiceUnavailable (503) otherwise. Read-only."""
        return {"database": check_database(self.db)}
