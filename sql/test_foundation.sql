-- test_foundation.sql - the foundation's checks in the real sqlite3 shell.
-- Run by tests/run_sql.sh, which loads libsafeconc on the shell's first (in-memory)
-- connection and runs this file in a fresh temporary directory. Every check is one line
-- `select 'id', <expr> = <expected>;` and must print `id|1`.

-- The loading connection: it keeps its own VFS but gets the SQL functions.
select 'load_01', safeconc_version() glob '[0-9]*.[0-9]*.[0-9]*';
-- (the exact function list is pinned in tests/load_test.cc)
select 'load_02', (select count(*) from pragma_function_list
                   where name in ('safeconc_version', 'safeconc_stats', 'safeconc_config')) = 4;
select 'load_03', safeconc_config('safeconc_timeout') = '5000';
select 'load_04', json_extract(safeconc_stats(), '$.vfs.is_default') = 1;
select 'load_05', json_extract(safeconc_stats(), '$.vfs.base') = 'unix';

-- A later open goes through safeconc: its file shows up in safeconc_stats.
.open found.db
select 'vfs_01', json_valid(safeconc_stats()) = 1;
create table t(x integer primary key, y text);
insert into t(y) values ('a'), ('b'), ('c');
select 'vfs_02', (select count(*) from t) = 3;
select 'vfs_03', (select count(*) from json_each(safeconc_stats(), '$.databases')
                  where json_extract(value, '$.path') like '%/found.db') = 1;
select 'vfs_04', json_extract(safeconc_stats(), '$.process.files_open') >= 1;
select 'vfs_05', json_extract(safeconc_stats(), '$.process.lock_calls.xLock') > 0;
select 'vfs_06', json_type(safeconc_stats(), '$.databases') = 'array';

-- WAL works through the shim (xShm* forwarded).
.output /dev/null
pragma journal_mode = wal;
.output stdout
insert into t(y) values ('d');
select 'wal_01', (select journal_mode from pragma_journal_mode) = 'wal';
select 'wal_02', (select count(*) from t) = 4;
select 'wal_03', json_extract(safeconc_stats(), '$.process.lock_calls.xShmLock') > 0;
select 'wal_04', (select integrity_check from pragma_integrity_check) = 'ok';

-- safeconc_config sets the defaults of later opens.
select 'cfg_01', safeconc_config('safeconc_txn', 'IMMEDIATE') = 'immediate';
select 'cfg_02', safeconc_config('safeconc_txn') = 'immediate';
select 'cfg_03', safeconc_config('safeconc_call_timeout', 2500) = '2500';
select 'cfg_04', safeconc_config('safeconc_txn', 'deferred') = 'deferred';
select 'cfg_05', safeconc_config('safeconc_fair_ms') = '5';

-- `?vfs=unix` opts out: the file is not in safeconc's registry.
.open file:plain.db?vfs=unix
create table p(x);
select 'optout_01', (select count(*) from json_each(safeconc_stats(), '$.databases')
                     where json_extract(value, '$.path') like '%/plain.db') = 0;
-- The opted-out connection still gets the SQL functions (the auto-extension runs for every
-- open), while its file stays out of the coordinator (optout_01).
select 'optout_02', (select count(distinct name) from pragma_function_list where name in
                     ('safeconc_version', 'safeconc_stats', 'safeconc_config',
                      'safeconc_last_busy')) = 4;

-- Knobs through the URI of an explicit safeconc open.
.open file:knobs.db?vfs=safeconc&safeconc_timeout=2000&safeconc_txn=serial
select 'uri_01', (select count(*) from json_each(safeconc_stats(), '$.databases')
                  where json_extract(value, '$.path') like '%/knobs.db') = 1;
