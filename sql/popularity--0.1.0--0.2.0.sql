-- popularity 0.1.0 -> 0.2.0. Every change the 0.2.0 fragments (sql/install/) make to 0.1.0 is
-- repeated here; test/scripts/upgrade.sh checks that an upgraded install equals a fresh 0.2.0 one.
\echo Use "ALTER EXTENSION popularity UPDATE TO '0.2.0'" to load this file. \quit
