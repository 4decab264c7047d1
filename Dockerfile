# One image for every process of the shop: customers, products, orders, the gateway and
# the migrations. The command chooses the process, e.g.
#   docker run shop nameko run --config config.yml products.service:ProductsService
#   docker run shop python scripts/manage.py migrate
# docker-compose.yml and deploy/k8s/ use it; build from the repository root:
#   docker build -t shop .
FROM python:3.11-slim

# PYTHONDONTWRITEBYTECODE: the containers run on a read-only root filesystem (Kubernetes
# securityContext), so nothing may try to write __pycache__ at run time; the bytecode is
# compiled below, at build time, and only read afterwards.
ENV PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first, so this layer is reused when only the code changes.
COPY requirements.lock /app/requirements.lock
RUN pip install -r requirements.lock \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent app

# The code (.dockerignore keeps local state, tests and docs out), compiled once here.
COPY . /app
RUN python -m compileall -q /app

# Numeric, so Kubernetes can verify runAsNonRoot without a runAsUser of its own.
USER 10001:10001
# Gateway: WEB_SERVER_ADDRESS (8000). Services: the operations listener, when
# OPS_HTTP_ADDRESS is set (8100 in docker-compose.yml and deploy/k8s/).
EXPOSE 8000 8100
# Exec form: nameko is PID 1 and receives SIGTERM itself (a gateway drains, a service
# lets its running workers finish). The default is the gateway; every other process
# names its own command (docker-compose.yml, deploy/k8s/base/).
CMD ["nameko", "run", "--config", "config.yml", "gateway.service:GatewayService"]
