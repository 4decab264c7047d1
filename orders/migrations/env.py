from common.migrations import run_migrations
from orders.models import Base

run_migrations("orders", Base.metadata)
