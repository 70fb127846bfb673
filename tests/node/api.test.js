'use strict';
// The sync API on the cases better-sqlite3's docs/api.md shows, and the async twins on the
// same cases: each twin must give what its sync form gives (results and errors).
const test = require('node:test');
const assert = require('node:assert/strict');
const { Database, tempDir, opener } = require('./helpers');

const fresh = opener(tempDir(), 'a');

function cats() {
  const db = fresh();
  db.exec('CREATE TABLE cats (id INTEGER PRIMARY KEY, name TEXT NOT NULL, age INTEGER)');
  const insert = db.prepare('INSERT INTO cats (name, age) VALUES (@name, @age)');
  for (const c of [{ name: 'Joey', age: 2 }, { name: 'Sally', age: 4 }, { name: 'Junior', age: 1 }]) insert.run(c);
  return db;
}

// Runs fn(sync) and fn(async twin) and checks both give the same value, or the same error.
async function same(syncFn, asyncFn) {
  let s, a, se, ae;
  try { s = syncFn(); } catch (e) { se = e; }
  try { a = await asyncFn(); } catch (e) { ae = e; }
  if (se || ae) {
    assert.ok(se && ae, `sync ${se ? 'threw' : 'returned'}, async ${ae ? 'rejected' : 'resolved'}: ${se || ae}`);
    assert.equal(ae.constructor, se.constructor);
    assert.equal(ae.code, se.code);
    assert.equal(ae.message.replace(/Async\(\)/g, '()'), se.message); // runAsync() for run()
    return se;
  }
  assert.deepEqual(a, s);
  return s;
}

test('new Database(): properties, memory, options validation', () => {
  const db = new Database(':memory:');
  assert.equal(db.open, true);
  assert.equal(db.memory, true);
  assert.equal(db.name, ':memory:');
  assert.equal(db.readonly, false);
  assert.equal(db.inTransaction, false);
  assert.equal(new Database().memory, true);
  assert.throws(() => new Database(':memory:', { timeout: -1 }), TypeError);
  assert.throws(() => new Database(42), TypeError);
  assert.equal(db.close(), db);
  assert.equal(db.open, false);
});

test('run/get/all with positional, array and named parameters (sync and async)', async () => {
  const db = cats();
  const byName = db.prepare('SELECT name, age FROM cats WHERE name = ?');
  assert.equal(byName.database, db);
  assert.equal(byName.source, 'SELECT name, age FROM cats WHERE name = ?');
  assert.equal(byName.reader, true);
  assert.equal(byName.readonly, true);
  await same(() => byName.get('Joey'), () => byName.getAsync('Joey'));
  assert.deepEqual(byName.get('Joey'), { name: 'Joey', age: 2 });
  assert.equal(byName.get('nobody'), undefined);
  assert.equal(await byName.getAsync('nobody'), undefined);
  const all = db.prepare('SELECT name FROM cats WHERE age > ? ORDER BY id');
  assert.deepEqual(await same(() => all.all(1), () => all.allAsync(1)), [{ name: 'Joey' }, { name: 'Sally' }]);
  const people = db.prepare('SELECT ? AS a, ? AS b, ? AS c');
  const expect = { a: 'John', b: 'Smith', c: 45 };
  for (const args of [['John', 'Smith', 45], [['John', 'Smith', 45]], [['John'], ['Smith', 45]]]) {
    await same(() => people.get(...args), () => people.getAsync(...args));
    assert.deepEqual(people.get(...args), expect);
  }
  const named = db.prepare('SELECT @first AS a, :last AS b, $age AS c');
  assert.deepEqual(named.get({ first: 'John', last: 'Smith', age: 45 }), expect);
  const mixed = db.prepare('SELECT @name AS x, @name AS y, ? AS z');
  assert.deepEqual(await same(() => mixed.get(45, { name: 'Henry' }), () => mixed.getAsync(45, { name: 'Henry' })), { x: 'Henry', y: 'Henry', z: 45 });
  const ins = db.prepare('INSERT INTO cats (name, age) VALUES (?, ?)');
  assert.equal(ins.reader, false);
  assert.equal(ins.readonly, false);
  assert.deepEqual(ins.run('Tom', 3), { changes: 1, lastInsertRowid: 4 });
  assert.deepEqual(await ins.runAsync('Tim', 3), { changes: 1, lastInsertRowid: 5 });
  assert.deepEqual(db.prepare('SELECT 1').run(), { changes: 0, lastInsertRowid: 5 }); // run() on a reader
  db.close();
});

test('parameter and statement errors, sync and async alike', async () => {
  const db = cats();
  const two = db.prepare('SELECT ? AS a, ? AS b');
  const named = db.prepare('SELECT @x AS x');
  const ins = db.prepare('INSERT INTO cats (name) VALUES (?)');
  const cases = [
    [RangeError, /Too few parameter values/, (m) => two[m](1)],
    [RangeError, /Too many parameter values/, (m) => two[m](1, 2, 3)],
    [RangeError, /Missing named parameter "x"/, (m) => named[m]({ y: 1 })],
    [TypeError, /cannot be bound/, (m) => two[m](1, Symbol('s'))],
    [TypeError, /no named parameters/, (m) => two[m](1, 2, { a: 1 })],
    [TypeError, /does not return data/, (m) => ins[m === 'get' ? 'get' : 'getAsync']('x')],
    [Database.SqliteError, /NOT NULL constraint failed/, (m) => ins[m === 'get' ? 'run' : 'runAsync'](null)],
  ];
  for (const [cls, re, f] of cases) {
    const e = await same(() => f('get'), () => f('getAsync'));
    assert.ok(e instanceof cls, `${e}`);
    assert.match(e.message, re);
  }
  assert.throws(() => db.prepare('SELEC 1'), { name: 'SqliteError', code: 'SQLITE_ERROR', message: /syntax error/ });
  assert.throws(() => db.prepare('SELECT 1; SELECT 2'), RangeError);
  assert.throws(() => db.prepare(''), RangeError);
  assert.throws(() => db.prepare(5), TypeError);
  db.close();
});

test('iterate() and iterateAsync() yield the same rows; break closes the iterator', async () => {
  const db = fresh();
  db.exec('CREATE TABLE n(x)');
  const ins = db.prepare('INSERT INTO n VALUES (?)');
  db.transaction(() => { for (let i = 1; i <= 1000; i++) ins.run(i); })();
  const stmt = db.prepare('SELECT x FROM n WHERE x > ? ORDER BY x');
  const sync = [...stmt.iterate(10)];
  const asyncRows = [];
  for await (const r of stmt.iterateAsync(10)) asyncRows.push(r);
  assert.equal(sync.length, 990);
  assert.deepEqual(asyncRows, sync);
  for (const row of stmt.iterate(0)) {
    assert.equal(stmt.busy, true);
    assert.throws(() => stmt.get(0), /busy/);
    if (row.x === 3) break;
  }
  assert.equal(stmt.busy, false);
  for await (const row of stmt.iterateAsync(0)) {
    assert.throws(() => stmt.get(0), /busy/);
    if (row.x === 300) break; // mid-batch
  }
  assert.equal(stmt.busy, false);
  assert.deepEqual(stmt.get(999), { x: 1000 }); // usable again
  // An error while iterating is thrown and closes the iterator.
  db.function('fail_at', (x) => { if (x === 5) throw new Error('five'); return x; });
  const bad = db.prepare('SELECT fail_at(x) AS v FROM n');
  assert.throws(() => { for (const r of bad.iterate()) void r; }, /five/);
  await assert.rejects(async () => { for await (const r of bad.iterateAsync()) void r; }, /five/);
  assert.equal(bad.busy, false);
  db.close();
});

test('pluck, raw, expand, columns, bind', async () => {
  const db = cats();
  db.exec('CREATE TABLE owners (id INTEGER PRIMARY KEY, name TEXT, cat INTEGER)');
  db.prepare('INSERT INTO owners (name, cat) VALUES (?, ?)').run('Ann', 1);
  const names = db.prepare('SELECT name FROM cats ORDER BY id').pluck();
  assert.deepEqual(await same(() => names.all(), () => names.allAsync()), ['Joey', 'Sally', 'Junior']);
  names.pluck(false);
  assert.deepEqual(names.get(), { name: 'Joey' });
  const raw = db.prepare('SELECT id, name FROM cats ORDER BY id').raw();
  assert.deepEqual(await same(() => raw.get(), () => raw.getAsync()), [1, 'Joey']);
  const join = db.prepare('SELECT cats.name, owners.name, 1 + 1 AS two FROM cats JOIN owners ON owners.cat = cats.id').expand();
  assert.deepEqual(await same(() => join.get(), () => join.getAsync()), { cats: { name: 'Joey' }, owners: { name: 'Ann' }, $: { two: 2 } });
  join.pluck(); // pluck turns expand off
  assert.equal(join.get(), 'Joey');
  assert.deepEqual(db.prepare('SELECT id, age + 1 AS next FROM cats').columns(), [
    { name: 'id', column: 'id', table: 'cats', database: 'main', type: 'INTEGER' },
    { name: 'next', column: null, table: null, database: null, type: null },
  ]);
  assert.throws(() => db.prepare('DELETE FROM cats').pluck(), TypeError);
  const joey = db.prepare('SELECT age FROM cats WHERE name = ?').pluck().bind('Joey');
  assert.equal(joey.get(), 2);
  assert.equal(await joey.getAsync(), 2);
  assert.throws(() => joey.get('Sally'), /already has bound parameters/);
  assert.throws(() => joey.bind('Sally'), /only be invoked once/);
  db.close();
});

test('transaction(): commit, rollback on throw, nesting as savepoints, variants', () => {
  const db = fresh();
  db.exec('CREATE TABLE e(note TEXT UNIQUE)');
  const add = db.prepare('INSERT INTO e VALUES (?)');
  const many = db.transaction((notes) => { for (const n of notes) add.run(n); return notes.length; });
  assert.equal(many(['a', 'b']), 2);
  assert.throws(() => many(['c', 'a']), { code: 'SQLITE_CONSTRAINT_UNIQUE' });
  assert.equal(db.inTransaction, false);
  assert.deepEqual(db.prepare('SELECT note FROM e ORDER BY note').pluck().all(), ['a', 'b']);
  let inside;
  const outer = db.transaction(() => {
    add.run('x');
    try { many(['y', 'x']); } catch (e) { inside = db.inTransaction; } // the inner savepoint rolls back
    add.run('z');
  });
  outer();
  assert.equal(inside, true);
  assert.deepEqual(db.prepare('SELECT note FROM e ORDER BY note').pluck().all(), ['a', 'b', 'x', 'z']);
  for (const v of ['deferred', 'immediate', 'exclusive']) {
    assert.equal(typeof many[v], 'function');
    assert.equal(many[v]([`${v}1`]), 1);
  }
  assert.equal(many.database, db);
  assert.throws(() => db.transaction(async () => {})(), /cannot return a promise/);
  assert.equal(db.inTransaction, false);
  db.close();
});

test('pragma(): rows, simple, and pragmas without results', () => {
  const db = fresh();
  db.pragma('cache_size = 32000');
  assert.equal(db.pragma('cache_size', { simple: true }), 32000);
  assert.deepEqual(db.pragma('cache_size'), [{ cache_size: 32000 }]);
  assert.equal(db.pragma('safeconc_timeout', { simple: true }), '5000'); // through safeconc
  assert.throws(() => db.pragma('cache_size', { simple: 1 }), TypeError);
  db.close();
});

test('integers: numbers up to 2^53, BigInt beyond, safeIntegers() for BigInt always', async () => {
  const db = fresh();
  const s = db.prepare('SELECT 9007199254740991 AS max, 9007199254740993 AS over, 1 AS one');
  assert.deepEqual(await same(() => s.get(), () => s.getAsync()), { max: 2 ** 53 - 1, over: 9007199254740993n, one: 1 });
  s.safeIntegers();
  assert.deepEqual(await same(() => s.get(), () => s.getAsync()), { max: 9007199254740991n, over: 9007199254740993n, one: 1n });
  db.defaultSafeIntegers();
  assert.deepEqual(db.prepare('SELECT 1 AS one').get(), { one: 1n });
  db.exec('CREATE TABLE t(x)');
  assert.deepEqual(db.prepare('INSERT INTO t VALUES (1)').run(), { changes: 1, lastInsertRowid: 1n });
  db.defaultSafeIntegers(false);
  assert.deepEqual(db.prepare('SELECT typeof(?) AS a, typeof(?) AS b, ? AS c').get(2n ** 62n, 1.5, 2n ** 62n), { a: 'integer', b: 'real', c: 2n ** 62n });
  assert.throws(() => db.prepare('SELECT ?').get(2n ** 64n), /64-bit/);
  db.close();
});

test('exec() and execAsync() run scripts; both return the database', async () => {
  const db = fresh();
  assert.equal(db.exec('CREATE TABLE a(x); INSERT INTO a VALUES (1)'), db);
  assert.equal(await db.execAsync('INSERT INTO a VALUES (2); INSERT INTO a VALUES (3)'), db);
  assert.deepEqual(db.prepare('SELECT sum(x) AS s FROM a').get(), { s: 6 });
  await same(() => db.exec('INSERT INTO nope VALUES (1)'), () => db.execAsync('INSERT INTO nope VALUES (1)'));
  db.close();
});
