from common.migrations import run_migrations
from customers.models import Base

run_migrations("customers", Base.metadata)
