'use strict';
// Database: better-sqlite3's API over system SQLite with libsafeconc loaded, plus execAsync
// and the async twins of Statement. Native methods are in src/database.cc.
const { native, soPath } = require('./native');
const Statement = require('./statement');

const BACKUP_INIT = 0;
const BACKUP_STEP = 1;
const BACKUP_FINISH = 2;
const SQLITE_DETERMINISTIC = 0x800;
const SQLITE_DIRECTONLY = 0x80000;
const txStatements = new WeakMap();

function isMemory(name) {
  return name === '' || name === ':memory:' || /^file::memory:|[?&]mode=memory(&|$)/.test(name);
}

class Database extends native.Database {
  constructor(filename = '', options = {}) {
    let buffer;
    if (Buffer.isBuffer(filename)) {
      // serialize()d bytes: an in-memory database holding a copy of them.
      [buffer, filename] = [filename, ':memory:'];
    }
    if (typeof filename !== 'string') throw new TypeError('Expected first argument to be a string');
    if (options === null || typeof options !== 'object') {
      throw new TypeError('Expected second argument to be an options object');
    }
    const timeout = options.timeout === undefined ? 5000 : options.timeout;
    if (!Number.isInteger(timeout) || timeout < 0 || timeout > 0x7fffffff) {
      throw new TypeError('Expected the "timeout" option to be a positive integer');
    }
    if (options.libsafeconc !== undefined && typeof options.libsafeconc !== 'string') {
      throw new TypeError('Expected the "libsafeconc" option to be a string');
    }
    const verbose = options.verbose === undefined ? null : options.verbose;
    if (verbose !== null && typeof verbose !== 'function') {
      throw new TypeError('Expected the "verbose" option to be a function');
    }
    const flags = (options.readonly ? 1 : 0) | (options.fileMustExist && !buffer ? 2 : 0);
    super(filename, flags, timeout, options.libsafeconc || soPath, buffer);
    if (verbose) this._setVerbose(verbose);
    Object.defineProperty(this, 'name', { value: filename, enumerable: true });
    Object.defineProperty(this, 'memory', { value: isMemory(filename), enumerable: true });
    this._safeIntegers = false;
  }

  prepare(source) {
    return new Statement(this, source);
  }

  exec(source) {
    super.exec(source);
    return this;
  }

  /** exec() on the pool; resolves to this database. */
  execAsync(source) {
    try {
      return this._execAsync(source).then(() => this);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  close() {
    super.close();
    return this;
  }

  loadExtension(path, entryPoint) {
    super.loadExtension(path, entryPoint);
    return this;
  }

  unsafeMode(toggle = true) {
    if (typeof toggle !== 'boolean') throw new TypeError('Expected first argument to be a boolean');
    super.unsafeMode(toggle);
    return this;
  }

  serialize(options = {}) {
    if (options === null || typeof options !== 'object') {
      throw new TypeError('Expected first argument to be an options object');
    }
    const attached = options.attached === undefined ? 'main' : options.attached;
    if (typeof attached !== 'string') throw new TypeError('Expected the "attached" option to be a string');
    if (!attached) throw new TypeError('The "attached" option cannot be an empty string');
    return this._serialize(attached);
  }

  /**
   * SQLite's online backup to the file `destination`, stepped on the pool in this
   * connection's order (100 pages per step unless progress() returns another count; 0 pauses).
   */
  async backup(destination, options = {}) {
    if (typeof destination !== 'string') throw new TypeError('Expected first argument to be a string');
    if (options === null || typeof options !== 'object') {
      throw new TypeError('Expected second argument to be an options object');
    }
    const attached = options.attached === undefined ? 'main' : options.attached;
    const progress = options.progress === undefined ? null : options.progress;
    if (typeof attached !== 'string') throw new TypeError('Expected the "attached" option to be a string');
    if (!attached) throw new TypeError('The "attached" option cannot be an empty string');
    if (progress !== null && typeof progress !== 'function') {
      throw new TypeError('Expected the "progress" option to be a function');
    }
    if (!destination) throw new TypeError('Backup filename cannot be an empty string');
    if (destination === ':memory:') throw new TypeError('Invalid backup filename ":memory:"');
    const handle = native._backupNew(destination, attached);
    await this._backup(handle, BACKUP_INIT, 0);
    let pages = 100;
    let finished = false;
    try {
      for (;;) {
        const r = await this._backup(handle, BACKUP_STEP, pages);
        const report = { totalPages: r.totalPages, remainingPages: r.remainingPages };
        if (r.done) {
          finished = true;
          await this._backup(handle, BACKUP_FINISH, 0);
          return report;
        }
        if (progress) {
          const next = progress(report);
          if (next !== undefined) {
            if (typeof next !== 'number' || !Number.isInteger(next) || next < 0 || next > 0x7fffffff) {
              throw new TypeError('Expected progress callback to return a non-negative integer');
            }
            pages = next;
          }
        }
        if (pages === 0) await new Promise((resolve) => setImmediate(resolve)); // paused
      }
    } finally {
      // Failed or aborted (progress threw, close()): release the backup, keep the first error.
      if (!finished) await this._backup(handle, BACKUP_FINISH, 0).catch(() => {});
    }
  }

  defaultSafeIntegers(toggle = true) {
    if (typeof toggle !== 'boolean') throw new TypeError('Expected first argument to be a boolean');
    this._safeIntegers = toggle;
    return this;
  }

  pragma(source, options = {}) {
    if (typeof source !== 'string') throw new TypeError('Expected first argument to be a string');
    if (options === null || typeof options !== 'object') {
      throw new TypeError('Expected second argument to be an options object');
    }
    const simple = options.simple === undefined ? false : options.simple;
    if (typeof simple !== 'boolean') throw new TypeError('Expected the "simple" option to be a boolean');
    const stmt = this.prepare(`PRAGMA ${source}`);
    if (!stmt.reader) {
      stmt.run();
      return simple ? undefined : [];
    }
    return simple ? stmt.pluck().get() : stmt.all();
  }

  transaction(fn) {
    if (typeof fn !== 'function') throw new TypeError('Expected first argument to be a function');
    const db = this;
    let s = txStatements.get(db);
    if (!s) {
      const p = (sql) => db.prepare(sql);
      s = {
        begin: p('BEGIN'), deferred: p('BEGIN DEFERRED'), immediate: p('BEGIN IMMEDIATE'),
        exclusive: p('BEGIN EXCLUSIVE'), commit: p('COMMIT'), rollback: p('ROLLBACK'),
        savepoint: p('SAVEPOINT "safeconc tx"'), release: p('RELEASE "safeconc tx"'),
        rollbackTo: p('ROLLBACK TO "safeconc tx"'),
      };
      txStatements.set(db, s);
    }
    const make = (begin) =>
      function transactionFunction(...args) {
        let before, after, undo;
        if (db.inTransaction) {
          [before, after, undo] = [s.savepoint, s.release, s.rollbackTo];
        } else {
          [before, after, undo] = [begin, s.commit, s.rollback];
        }
        before.run();
        try {
          const result = fn.apply(this, args);
          if (result && typeof result.then === 'function') {
            throw new TypeError('Transaction function cannot return a promise');
          }
          after.run();
          return result;
        } catch (e) {
          // SQLite may have rolled back already (ON CONFLICT ROLLBACK, SQLITE_FULL, ...).
          if (db.inTransaction) {
            undo.run();
            if (undo !== s.rollback) after.run();
          }
          throw e;
        }
      };
    const variants = {
      deferred: make(s.deferred), immediate: make(s.immediate), exclusive: make(s.exclusive),
    };
    const main = make(s.begin);
    for (const f of [main, ...Object.values(variants)]) {
      Object.defineProperties(f, {
        deferred: { value: variants.deferred }, immediate: { value: variants.immediate },
        exclusive: { value: variants.exclusive }, database: { value: db },
      });
    }
    return main;
  }

  function(name, options, fn) {
    if (fn === undefined && typeof options === 'function') [options, fn] = [{}, options];
    if (typeof name !== 'string') throw new TypeError('Expected first argument to be a string');
    if (typeof fn !== 'function') throw new TypeError('Expected last argument to be a function');
    if (options === null || typeof options !== 'object') {
      throw new TypeError('Expected second argument to be an options object');
    }
    if (!name) throw new TypeError('User-defined function name cannot be an empty string');
    const nArg = options.varargs ? -1 : fn.length;
    if (nArg > 127) throw new RangeError('User-defined functions cannot have more than 127 arguments');
    this._function(name, nArg, flagsOf(options), safeOf(this, options), fn);
    return this;
  }

  aggregate(name, options) {
    if (typeof name !== 'string') throw new TypeError('Expected first argument to be a string');
    if (options === null || typeof options !== 'object') {
      throw new TypeError('Expected second argument to be an options object');
    }
    if (!name) throw new TypeError('User-defined function name cannot be an empty string');
    const { start, step, inverse, result } = options;
    if (typeof step !== 'function') throw new TypeError('Expected the "step" option to be a function');
    for (const [k, v] of [['inverse', inverse], ['result', result]]) {
      if (v !== undefined && typeof v !== 'function') {
        throw new TypeError(`Expected the "${k}" option to be a function`);
      }
    }
    const nArg = options.varargs ? -1 : Math.max(0, step.length - 1);
    if (nArg > 127) throw new RangeError('User-defined functions cannot have more than 127 arguments');
    const startFn = typeof start === 'function' ? start : () => (start === undefined ? null : start);
    this._aggregate(name, nArg, flagsOf(options), safeOf(this, options), startFn, step, result, inverse);
    return this;
  }
}

function flagsOf(options) {
  for (const k of ['deterministic', 'varargs', 'directOnly', 'safeIntegers']) {
    if (options[k] !== undefined && typeof options[k] !== 'boolean') {
      throw new TypeError(`Expected the "${k}" option to be a boolean`);
    }
  }
  return (options.deterministic ? SQLITE_DETERMINISTIC : 0) | (options.directOnly ? SQLITE_DIRECTONLY : 0);
}

function safeOf(db, options) {
  return options.safeIntegers === undefined ? db._safeIntegers : options.safeIntegers;
}

module.exports = Database;
