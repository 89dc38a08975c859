-- psql session for Larder's end-to-end tests: run directly and through Larder, outputs compared.
-- Covers: simple-query multi-statements, errors with all fields (VERBOSITY verbose), notices,
-- transactions/savepoints, SET/SHOW, LISTEN/NOTIFY, COPY and \copy both ways, cursors.
\set VERBOSITY verbose
\set SHOW_CONTEXT always
\pset pager off

CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL,
                    price numeric(10,2) CHECK (price IS NULL OR price >= 0),
                    tags text[], meta jsonb, created timestamptz DEFAULT '2024-01-01 00:00:00+00');
INSERT INTO items (id, name, price, tags, meta)
SELECT g, 'item ' || g, g * 1.25, ARRAY['t' || g, NULL], jsonb_build_object('g', g)
FROM generate_series(1, 20) g;

-- one simple Query message carrying several statements
SELECT 1 AS one \; SELECT 'two' AS two, 2.5::float8 AS x \; SELECT count(*) FROM items;
SELECT 1 \; SELECT 1/0 \; SELECT 3;
INSERT INTO items (id, name) VALUES (50, 'a') \; UPDATE items SET price = 1 WHERE id = 50 \; DELETE FROM items WHERE id = 50;

-- errors: every field
SELECT 1/0;
SELECT nosuchcol FROM items;
SELECT nme FROM items;
SELECT * FROM nosuchtable;
INSERT INTO items (id, name) VALUES (1, 'dup');
INSERT INTO items (id, name, price) VALUES (60, 'neg', -5);
INSERT INTO items (id) VALUES (61);
SELECT 'abc'::int;
SELEC 1;
DO $$ BEGIN RAISE EXCEPTION 'custom failure %', 7 USING DETAIL = 'some detail', HINT = 'some hint', ERRCODE = 'P0042'; END $$;

-- notices and warnings
DO $$ BEGIN RAISE NOTICE 'hello % from DO', 42; RAISE WARNING 'careful' USING DETAIL = 'a detail', HINT = 'a hint'; END $$;
SET client_min_messages = warning;
DO $$ BEGIN RAISE NOTICE 'suppressed'; RAISE WARNING 'shown'; END $$;
RESET client_min_messages;
DROP TABLE IF EXISTS does_not_exist;

-- transactions and savepoints
BEGIN;
INSERT INTO items (id, name) VALUES (100, 'tx');
SAVEPOINT s1;
INSERT INTO items (id, name) VALUES (100, 'dup in tx');
ROLLBACK TO SAVEPOINT s1;
INSERT INTO items (id, name) VALUES (101, 'after savepoint');
SAVEPOINT s2;
UPDATE items SET name = 'renamed' WHERE id = 101;
RELEASE SAVEPOINT s2;
COMMIT;
BEGIN;
SELECT 1/0;
SELECT 1;
ROLLBACK;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SHOW transaction_isolation;
INSERT INTO items (id, name) VALUES (102, 'rolled back');
ROLLBACK;
SELECT id, name FROM items WHERE id >= 100 ORDER BY id;
START TRANSACTION READ ONLY;
INSERT INTO items (id, name) VALUES (103, 'ro');
COMMIT;

-- SET / SHOW / session state
SHOW server_version_num;
SHOW search_path;
SET search_path TO pg_catalog, public;
SHOW search_path;
RESET search_path;
SET application_name = 'psql-suite';
SHOW application_name;
SET DateStyle = 'German';
SELECT '2024-05-06'::date, '2024-05-06 07:08:09+00'::timestamptz;
RESET DateStyle;
SET TimeZone = 'America/New_York';
SELECT '2024-05-06 07:08:09+00'::timestamptz;
RESET TimeZone;
SET statement_timeout = '100ms';
SELECT pg_sleep(2);
RESET statement_timeout;
SET extra_float_digits = 0;
SELECT 0.1::float8 + 0.2::float8;
RESET extra_float_digits;
SET nosuch.setting = 'custom ok';
SHOW nosuch.setting;
SET nosuchsetting = 1;

-- LISTEN / NOTIFY (psql prints notifications after each command)
LISTEN larder_chan;
NOTIFY larder_chan, 'payload one';
SELECT pg_notify('larder_chan', 'payload two');
UNLISTEN larder_chan;
NOTIFY larder_chan, 'not delivered';

-- PREPARE / EXECUTE
PREPARE byid(int) AS SELECT id, name, price FROM items WHERE id = $1;
EXECUTE byid(3);
EXECUTE byid(4);
DEALLOCATE byid;
EXECUTE byid(5);

-- COPY through the protocol, inline data
COPY items (id, name, price) FROM STDIN WITH (FORMAT csv);
200,copied one,1.50
201,"copied, two",
\.
COPY items (id, name) FROM STDIN;
202	tab separated
bad	row
\.
COPY (SELECT id, name, price, tags, meta FROM items WHERE id <= 5 OR id >= 200 ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER);
COPY (SELECT id, name FROM items WHERE id <= 3 ORDER BY id) TO STDOUT;

-- \copy to and from local files
\copy (SELECT id, name, price FROM items ORDER BY id) TO 'out.csv' WITH (FORMAT csv, HEADER)
\copy items (id, name, price) FROM 'in.csv' WITH (FORMAT csv, HEADER)
\copy items (id, name, price) FROM 'in_bad.csv' WITH (FORMAT csv, HEADER)
SELECT count(*), sum(price) FROM items;

-- catalog queries psql makes for \d
\d items
\dt

-- a result big enough to span many network reads, and FETCH_COUNT (a cursor under the hood)
SELECT g, md5(g::text) AS h FROM generate_series(1, 3000) g WHERE g % 500 = 0 OR g > 2995;
SELECT count(*), max(length(repeat('x', g))) FROM generate_series(1, 2000) g;
\set FETCH_COUNT 7
SELECT g FROM generate_series(1, 20) g;
\unset FETCH_COUNT

-- types in text format
SELECT NULL::int AS n, true AS b, 1.5::float8 AS f, 'NaN'::numeric AS nan, '\x0102ff'::bytea AS by,
       interval '1 day 2 hours' AS iv, '{"a": [1, null]}'::jsonb AS j, ARRAY[1, 2, NULL] AS arr,
       '2024-02-29'::date AS d, 'infinity'::timestamp AS inf, 'héllo ✓' AS uni, E'a\tb' AS tab,
       '(1,2)'::point AS pt, '[1,5)'::int4range AS rng, 12.5::money AS m;

-- the session still works at the end
SELECT 'done' AS status;
