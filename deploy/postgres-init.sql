-- Run once by the postgres image on an empty data directory
-- (mounted into /docker-entrypoint-initdb.d). One database per service.
CREATE DATABASE shop_customers;
CREATE DATABASE shop_products;
CREATE DATABASE shop_orders;
