-- Run once by the mysql image on an empty data volume (docker-compose.yml mounts this file
-- into /docker-entrypoint-initdb.d/). The image itself creates the `clairon` database and the
-- `clairon` user from MYSQL_DATABASE / MYSQL_USER / MYSQL_PASSWORD and grants it `clairon`.*.
-- Tests that create a fresh database per test name it clairon_test_<something>: let the
-- application user create, use and drop those too (scripts/infra.sh grants the same).
GRANT ALL PRIVILEGES ON `clairon\_test\_%`.* TO 'clairon'@'%';
