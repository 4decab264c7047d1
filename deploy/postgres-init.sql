-- Run once by the postgres image on an empty data directory
-- (mounted into /docker-entrypoint-initdb.d). One database per service, each owned by
-- the service's own role (no superuser, no CREATEDB/CREATEROLE), the only role allowed
-- to connect to it: what `make setup` does (common/admin.ensure_owner). A data
-- directory made before the roles existed is re-owned by
--   docker-compose run --rm -e DB_ADMIN_URI=postgresql+psycopg2://postgres@postgres:5432/postgres migrate python scripts/manage.py setup
CREATE ROLE shop_customers LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE ROLE shop_products LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE ROLE shop_orders LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE DATABASE shop_customers OWNER shop_customers;
CREATE DATABASE shop_products OWNER shop_products;
CREATE DATABASE shop_orders OWNER shop_orders;
REVOKE CONNECT, TEMPORARY ON DATABASE shop_customers FROM PUBLIC;
REVOKE CONNECT, TEMPORARY ON DATABASE shop_products FROM PUBLIC;
REVOKE CONNECT, TEMPORARY ON DATABASE shop_orders FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE shop_customers TO shop_customers;
GRANT CONNECT, TEMPORARY ON DATABASE shop_products TO shop_products;
GRANT CONNECT, TEMPORARY ON DATABASE shop_orders TO shop_orders;
