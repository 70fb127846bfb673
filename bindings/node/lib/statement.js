'use strict';
// Statement: better-sqlite3's prepared statement, plus async twins that step on the addon's
// threads (JS UDFs still run on this thread). Native methods are in src/statement.cc.
const { native } = require('./native');

const PLUCK = 1;
const RAW = 2;
const EXPAND = 4;
const SAFE = 8;
const RUN = 0;
const GET = 1;
const ALL = 2;
const BATCH = 256; // rows per round trip of iterateAsync()

function rejected(fn) {
  try {
    return fn();
  } catch (e) {
    return Promise.reject(e);
  }
}

class Statement extends native.Statement {
  constructor(database, source) {
    if (typeof source !== 'string') throw new TypeError('Expected first argument to be a string');
    super(database, source);
    Object.defineProperty(this, 'database', { value: database, enumerable: true });
    Object.defineProperty(this, 'source', { value: source, enumerable: true });
    this._flags = database._safeIntegers ? SAFE : 0;
  }

  run(...params) {
    return this._step(RUN, this._flags, params);
  }

  get(...params) {
    return this._step(GET, this._flags, params);
  }

  all(...params) {
    return this._step(ALL, this._flags, params);
  }

  iterate(...params) {
    this._iterOpen(params);
    return new RowIterator(this, this._flags);
  }

  runAsync(...params) {
    return rejected(() => this._stepAsync(RUN, this._flags, params));
  }

  getAsync(...params) {
    return rejected(() => this._stepAsync(GET, this._flags, params));
  }

  allAsync(...params) {
    return rejected(() => this._stepAsync(ALL, this._flags, params));
  }

  /** An async iterator over the rows, fetched from the pool in batches. */
  iterateAsync(...params) {
    return new AsyncRowIterator(this, this._flags, params);
  }

  pluck(toggle = true) {
    return this._shape('pluck', PLUCK, toggle);
  }

  expand(toggle = true) {
    return this._shape('expand', EXPAND, toggle);
  }

  raw(toggle = true) {
    return this._shape('raw', RAW, toggle);
  }

  safeIntegers(toggle = true) {
    if (typeof toggle !== 'boolean') throw new TypeError('Expected first argument to be a boolean');
    this._flags = toggle ? this._flags | SAFE : this._flags & ~SAFE;
    return this;
  }

  columns() {
    return this._columns();
  }

  bind(...params) {
    this._bind(params);
    return this;
  }

  _shape(name, bit, toggle) {
    if (typeof toggle !== 'boolean') throw new TypeError('Expected first argument to be a boolean');
    if (!this.reader) throw new TypeError(`The ${name}() method is only for statements that return data`);
    // pluck, expand and raw exclude each other.
    this._flags = toggle ? (this._flags & ~(PLUCK | EXPAND | RAW)) | bit : this._flags & ~bit;
    return this;
  }
}

class RowIterator {
  constructor(stmt, flags) {
    this._stmt = stmt;
    this._flags = flags;
    this._open = true;
  }

  next() {
    if (!this._open) return { value: undefined, done: true };
    let row;
    try {
      row = this._stmt._iterNext(this._flags);
    } catch (e) {
      this._open = false;
      throw e;
    }
    if (row === undefined) {
      this._open = false;
      return { value: undefined, done: true };
    }
    return { value: row, done: false };
  }

  return(value) {
    if (this._open) {
      this._open = false;
      this._stmt._iterClose();
    }
    return { value, done: true };
  }

  [Symbol.iterator]() {
    return this;
  }
}

class AsyncRowIterator {
  constructor(stmt, flags, params) {
    this._stmt = stmt;
    this._flags = flags;
    this._rows = [];
    this._pos = 0;
    this._first = true;
    this._done = false;
    this._error = null;
    try {
      stmt._iterAsyncOpen(params);
    } catch (e) {
      this._done = true;
      this._error = e; // reported by the first next(), as the other async forms reject
    }
    this._chain = Promise.resolve();
  }

  // Calls are served in order, one fetch at a time.
  next() {
    const p = this._chain.then(() => this._next());
    this._chain = p.then(() => {}, () => {});
    return p;
  }

  async _next() {
    if (this._error) {
      const e = this._error;
      this._error = null;
      throw e;
    }
    while (this._pos >= this._rows.length) {
      if (this._done) return { value: undefined, done: true };
      let r;
      try {
        r = await this._stmt._fetch(this._flags, BATCH, this._first);
      } catch (e) {
        this._done = true;
        throw e;
      }
      this._first = false;
      this._rows = r.rows;
      this._pos = 0;
      this._done = r.done;
    }
    return { value: this._rows[this._pos++], done: false };
  }

  return(value) {
    const p = this._chain.then(async () => {
      if (!this._done) {
        this._done = true;
        this._rows = [];
        await this._stmt._iterAsyncClose();
      }
      return { value, done: true };
    });
    this._chain = p.then(() => {}, () => {});
    return p;
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}

module.exports = Statement;
