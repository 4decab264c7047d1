from common.migrations import run_migrations
from products.models import Base

run_migrations("products", Base.metadata)
