"""The benchmarks of the running stack (docs/BENCHMARKS.md).

`make bench` (``python bench/run.py``) is split by concern:

* ``bench/settings.py``  paths, the environment knobs (``BENCH_*``, ``BENCH_PROFILE``),
  the harness error, and the products database URI read through ``common/config.py``;
* ``bench/cpu.py``       per-process CPU accounting from /proc, attributed to components
  (gateway, each service, RabbitMQ, PostgreSQL, wrk, the bench), and restart detection;
* ``bench/wrk.py``       driving wrk with the Lua scripts of ``bench/lua`` (load, drain,
  SIGINT) and turning its ``BENCH_JSON`` line into a row;
* ``bench/data.py``      the data the scenarios need: the HTTP API (products, customers)
  and the products table (count, id samples, seeding through scripts/manage.py);
* ``bench/scenarios.py`` the scenario table (ceiling, product read, lists, customers,
  orders spread, orders hot with its oversell check, burst, fixed rate) and each one's
  setup;
* ``bench/client.py``    the asyncio keep-alive HTTP/1.1 connection of the Python clients;
* ``bench/openloop.py``  load at a fixed arrival rate, latency from the scheduled send
  time in an HdrHistogram (no coordinated omission), and its closed-loop contrast; also
  a standalone probe;
* ``bench/latency.py``   scenario 8: capacity by wrk, then the open loop at fractions of it;
* ``bench/report.py``    the result row, the machine line, the table with the ratios to
  the ceiling, the notes, the saved JSON;
* ``bench/run.py``       the entry point: settings, preflight, the scenarios in order,
  the report, the exit status;
* ``bench/selfcheck.py`` an offline check of all of the above (no stack needed).

The other tools are scripts of their own: ``scaling.py`` (`make bench-scaling`) and
``profile.py`` (`make profile`) run ``bench/run.py`` as a subprocess;
``side_by_side.py``, ``reconciler.py``, ``otlp_sink.py``, ``overload.py`` and the plots
(``plot.py``, ``latency_plot.py``: matplotlib, not in the lock) stand alone.
"""
