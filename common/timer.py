"""``@config_timer("KEY")``: Nameko's ``@timer`` with its interval read from the
container's settings at setup (:mod:`common.settings`: ``KEY``'s default is written there,
once), so intervals are configured like every other setting.
An interval of 0 (or less) disables the timer."""

from typing import Any

from nameko.timer import Timer

from common.settings import Settings, settings_of


class ConfigTimer(Timer):
    def __init__(self, config_key: str, **kwargs: Any) -> None:
        if config_key not in Settings.keys():
            raise KeyError(f"{config_key} is not a setting (common/settings.py)")
        self.config_key = config_key
        super().__init__(interval=Settings.default(config_key), **kwargs)

    def setup(self) -> None:
        self.interval = settings_of(self.container.config).value(self.config_key)
        super().setup()

    def start(self) -> None:
        if self.interval > 0:
            super().start()

    def stop(self) -> None:
        if self.gt is not None:
            super().stop()
        else:
            self.should_stop.send(True)

    def kill(self) -> None:
        if self.gt is not None:
            super().kill()


config_timer = ConfigTimer.decorator
