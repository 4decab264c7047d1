"""Where a process's log lines go (common/logs.py ``process_log_handler``): stderr, or a
file the process writes itself and rotates by size (`make up`, ``SHOP_LOG_FILE``)."""

import json
import logging
import logging.config
import sys

from common.config import load_config
from common.logs import JsonFormatter, RotatingLogFile, process_log_handler


class CountingFormatter(JsonFormatter):
    calls = 0

    def format(self, record):
        type(self).calls += 1
        return super().format(record)


def record(message):
    return logging.LogRecord("shop.worker", logging.INFO, __file__, 1, message, (), None)


def test_without_a_file_the_lines_go_to_stderr():
    handler = process_log_handler("")
    assert type(handler) is logging.StreamHandler and handler.stream is sys.stderr


def test_a_process_file_rotates_by_size_and_formats_each_line_once(tmp_path):
    path = tmp_path / "orders-0.log"
    handler = process_log_handler(str(path), max_bytes=1000, backups=2)
    assert isinstance(handler, RotatingLogFile)
    handler.setFormatter(CountingFormatter())
    for n in range(40):
        handler.handle(record(f"line {n}"))
    handler.close()
    assert CountingFormatter.calls == 40  # upstream's size check formats each line again
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["orders-0.log", "orders-0.log.1", "orders-0.log.2"]  # two kept
    lines = [json.loads(line) for p in tmp_path.iterdir() for line in p.read_text().splitlines()]
    assert {line["message"] for line in lines} <= {f"line {n}" for n in range(40)}
    assert lines and all(line["logger"] == "shop.worker" for line in lines)
    # the newest lines are in the current file, and no file grew far past the bound
    assert json.loads(path.read_text().splitlines()[-1])["message"] == "line 39"
    assert all(p.stat().st_size < 1000 + 200 for p in tmp_path.iterdir())


def test_config_yml_sends_the_lines_to_shop_log_file(tmp_path, monkeypatch):
    path = tmp_path / "gateway-8000-0.log"
    monkeypatch.setenv("SHOP_LOG_FILE", str(path))
    root = logging.getLogger()
    config = load_config()["LOGGING"]
    saved = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in config["loggers"]}
    try:
        logging.config.dictConfig(config)
        logging.getLogger("shop.worker").info("written by the process", extra={"n": 1})
        for handler in root.handlers:
            handler.flush()
        (line,) = [json.loads(text) for text in path.read_text().splitlines()]
        assert (line["message"], line["n"]) == ("written by the process", 1)
    finally:
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
