'use strict';
// safeconc_node: queries on the libuv thread pool, JavaScript user-defined functions on the
// JS thread (through libsafeconc's trampoline table). See docs/host-integration.md.
//
//   const { open } = require('./bindings/node');
//   const db = open('app.db');
//   db.function('sleep', (ms) => { ...; return ms; });
//   const row = await db.prepare('SELECT sleep(200) AS val').get();   // { val: 200 }
//   await db.close();
//
// The native addon is build/safeconc_node.node and libsafeconc build/libsafeconc.so (both
// built by `make`); SAFECONC_NODE_ADDON and SAFECONC_SO override where they are looked for.
const path = require('node:path');

const buildDir = path.join(__dirname, '..', '..', 'build');
const addonPath = process.env.SAFECONC_NODE_ADDON || path.join(buildDir, 'safeconc_node.node');
const defaultSo = process.env.SAFECONC_SO || path.join(path.dirname(addonPath), 'libsafeconc.so');
const native = require(addonPath);

const MODE = { get: 0, all: 1, run: 2, exec: 3, close: 4 };
const SQLITE_DETERMINISTIC = 0x800;
const SQLITE_DIRECTONLY = 0x80000;

class Statement {
  constructor(db, sql) {
    if (typeof sql !== 'string') throw new TypeError('prepare(sql): sql must be a string');
    this.database = db;
    this.source = sql;
    this._active = 0; // calls of this statement not finished yet
  }

  _enter(method) {
    // A UDF that this very statement is running calls it again: with SQLite that re-enters a
    // running statement (node issue 65102 class). Refuse it clearly instead.
    if (this._active > 0 && native.inUdf()) {
      throw new Error(
        `statement.${method}() was called from inside a user-defined function while this ` +
          'statement is running; prepare a separate statement or call it after the query finishes',
      );
    }
  }

  // Not async: re-entry throws synchronously, where the mistake is; SQL errors reject.
  _run(mode, method, params) {
    this._enter(method);
    let p;
    try {
      p = this.database._native._query(mode, this.source, params);
    } catch (e) {
      return Promise.reject(e);
    }
    this._active++;
    return p.finally(() => {
      this._active--;
    });
  }

  /** The first row as an object keyed by column name, or undefined. */
  get(...params) {
    return this._run(MODE.get, 'get', params);
  }

  /** Every row. */
  all(...params) {
    return this._run(MODE.all, 'all', params);
  }

  /** Runs it for its effect: { changes, lastInsertRowid }. */
  run(...params) {
    return this._run(MODE.run, 'run', params);
  }

  _sync(mode, method, params) {
    this._enter(method);
    this._active++;
    try {
      return this.database._native._querySync(mode, this.source, params);
    } finally {
      this._active--;
    }
  }

  /** Synchronous forms: step on the JS thread (UDFs run directly, no dispatch). They throw
   * while async queries on the same database are running or queued. */
  getSync(...params) {
    return this._sync(MODE.get, 'getSync', params);
  }

  allSync(...params) {
    return this._sync(MODE.all, 'allSync', params);
  }

  runSync(...params) {
    return this._sync(MODE.run, 'runSync', params);
  }
}

class Database {
  constructor(file, options = {}) {
    if (typeof file !== 'string') throw new TypeError('open(path): path must be a string');
    this.name = file;
    this._native = new native.Database(file, options.libsafeconc || defaultSo);
  }

  /** Prepares lazily: the SQL is compiled on the pool when it runs. */
  prepare(sql) {
    return new Statement(this, sql);
  }

  /** Runs a script of one or more statements on the pool. */
  async exec(sql) {
    if (typeof sql !== 'string') throw new TypeError('exec(sql): sql must be a string');
    return this._native._query(MODE.exec, sql, []);
  }

  /**
   * Registers a scalar function. fn runs on this thread, whichever thread steps the query.
   * options: { deterministic, directOnly, varargs }.
   */
  function(name, fn, options = {}) {
    if (typeof name !== 'string') throw new TypeError('function(name, fn): name must be a string');
    if (typeof fn !== 'function') throw new TypeError('function(name, fn): fn must be a function');
    const nArg = options.varargs ? -1 : fn.length;
    this._native._function(name, nArg, flags(options), fn);
    return this;
  }

  /**
   * Registers an aggregate: { start, step, result }. start is the initial accumulator (or a
   * function returning it); step(acc, ...args) returns the next one (or mutates acc and
   * returns undefined); result(acc) the value (default: acc).
   */
  aggregate(name, options) {
    if (typeof name !== 'string') throw new TypeError('aggregate(name, ...): name must be a string');
    if (!options || typeof options.step !== 'function') {
      throw new TypeError('aggregate(name, { start, step, result }): step must be a function');
    }
    if (options.result !== undefined && typeof options.result !== 'function') {
      throw new TypeError('aggregate(): result must be a function');
    }
    const nArg = options.varargs ? -1 : Math.max(0, options.step.length - 1);
    this._native._aggregate(
      name,
      nArg,
      flags(options),
      typeof options.start === 'function' ? options.start : () => options.start ?? null,
      options.step,
      options.result,
    );
    return this;
  }

  /**
   * Closes after the queries already queued finish (they complete normally); calls made
   * after close() reject. Throws when called from inside one of this database's UDFs.
   */
  close() {
    return this._native._query(MODE.close, '', []);
  }
}

function flags(options) {
  let f = 0;
  if (options.deterministic) f |= SQLITE_DETERMINISTIC;
  if (options.directOnly) f |= SQLITE_DIRECTONLY;
  return f;
}

/** Opens (or creates) a database; path may be a file: URI. */
function open(file, options) {
  return new Database(file, options);
}

/** Objects of the binding alive in the process, for leak checks:
 * { environments, databases, functions, queries } (every thread counted). */
function liveObjects() {
  return native.liveObjects();
}

module.exports = { open, Database, Statement, liveObjects };
