"""The test harness itself: a stack that fails to start leaves no process behind.

A stack fixture whose start raised never reached ``__exit__``: supervisord and every
program it had spawned kept running after the test (twelve orphans found after one CI
failure, in process groups of their own). ``Stack.__enter__`` now stops what it started."""

import pytest

from scripts.processes import process_alive, wait_for
from tests.harness import Stack, rabbit_vhost, stack_env


class NeverReady(Stack):
    """A stack whose readiness check fails once every program has a pid (a fixture's
    start that raised); ``spawned`` holds supervisord's pid and the programs'."""

    spawned: list[int] = []

    def wait_ready(self, services=None):
        names = ["customers-0", "gateway-0"]
        wait_for(lambda: all(self.ctl("pid", self.program(n)).isdigit() for n in names), "pids")
        self.spawned = [self.supervisord.pid, *(self.pid(name) for name in names)]
        raise AssertionError("stack not ready (on purpose)")


def test_a_stack_that_failed_to_start_stops_its_processes(
    request, rabbit_manager, test_db_uris, tmp_path
):
    amqp_uri = request.config.getoption("RABBIT_AMQP_URI")
    with rabbit_vhost(rabbit_manager, amqp_uri, "shop_harness") as vhost_uri:
        stack = NeverReady(
            stack_env(vhost_uri, test_db_uris), str(tmp_path), {"customers": 1}, gateways=1
        )
        with pytest.raises(AssertionError, match="on purpose"):
            with stack:
                pytest.fail("the stack started")
    assert len(stack.spawned) == 3
    assert [pid for pid in stack.spawned if process_alive(pid)] == []
