"""``@config_timer("KEY", default)``: Nameko's ``@timer`` with its interval read from the
container config at setup, so intervals live in config.yml like every other setting.
An interval of 0 (or less) disables the timer."""
from nameko.timer import Timer


class ConfigTimer(Timer):
    def __init__(self, config_key, default, **kwargs):
        self.config_key = config_key
        self.default = default
        super().__init__(interval=default, **kwargs)

    def setup(self):
        self.interval = float(self.container.config.get(self.config_key, self.default))
        super().setup()

    def start(self):
        if self.interval > 0:
            super().start()

    def stop(self):
        if self.gt is not None:
            super().stop()
        else:
            self.should_stop.send(True)

    def kill(self):
        if self.gt is not None:
            super().kill()


config_timer = ConfigTimer.decorator
