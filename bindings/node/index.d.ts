// Type declarations of safeconc-sqlite: better-sqlite3's API (as in @types/better-sqlite3)
// plus the async twins. See README.md for where this package differs from better-sqlite3.
/// <reference types="node" />

declare namespace Database {
  type BindValue = number | bigint | string | Buffer | ArrayBufferView | boolean | null | undefined;
  type BindParameters = BindValue | BindValue[] | Record<string, BindValue>;

  interface Options {
    /** Open read-only (writes fail with SQLITE_READONLY). Default false. */
    readonly?: boolean;
    /** Throw (SQLITE_CANTOPEN) instead of creating a missing file. Default false. */
    fileMustExist?: boolean;
    /** Busy timeout in ms (sqlite3_busy_timeout). Default 5000. */
    timeout?: number;
    /** Path of libsafeconc; default: next to the addon. */
    libsafeconc?: string;
    /**
     * Called with every SQL statement run, its bound values expanded: before it runs for the
     * sync forms and exec (a throw stops it), after it ran for the async twins (a throw
     * rejects their promise).
     */
    verbose?: ((sql: string) => void) | null;
  }

  interface BackupMetadata {
    totalPages: number;
    remainingPages: number;
  }
  interface BackupOptions {
    /** The attached database to copy. Default 'main'. */
    attached?: string;
    /** Called after each step; a returned number sets the pages per step (0 pauses). */
    progress?: (info: BackupMetadata) => number | void;
  }
  interface SerializeOptions {
    /** The attached database to serialize. Default 'main'. */
    attached?: string;
  }

  interface RunResult {
    changes: number;
    lastInsertRowid: number | bigint;
  }

  interface ColumnDefinition {
    name: string;
    column: string | null;
    table: string | null;
    database: string | null;
    type: string | null;
  }

  interface Statement<BindParams extends unknown[] = unknown[], Result = unknown> {
    readonly database: Database;
    readonly source: string;
    readonly reader: boolean;
    readonly readonly: boolean;
    readonly busy: boolean;
    run(...params: BindParams): RunResult;
    get(...params: BindParams): Result | undefined;
    all(...params: BindParams): Result[];
    iterate(...params: BindParams): IterableIterator<Result>;
    runAsync(...params: BindParams): Promise<RunResult>;
    getAsync(...params: BindParams): Promise<Result | undefined>;
    allAsync(...params: BindParams): Promise<Result[]>;
    /** Rows fetched from the pool in batches. break (return()) closes it. */
    iterateAsync(...params: BindParams): AsyncIterableIterator<Result>;
    pluck(toggle?: boolean): this;
    expand(toggle?: boolean): this;
    raw(toggle?: boolean): this;
    safeIntegers(toggle?: boolean): this;
    columns(): ColumnDefinition[];
    bind(...params: BindParams): this;
  }

  interface Transaction<F extends (...args: any[]) => any> {
    (...args: Parameters<F>): ReturnType<F>;
    deferred: Transaction<F>;
    immediate: Transaction<F>;
    exclusive: Transaction<F>;
    readonly database: Database;
  }

  interface RegistrationOptions {
    varargs?: boolean;
    deterministic?: boolean;
    directOnly?: boolean;
    safeIntegers?: boolean;
  }

  interface AggregateOptions<T = any> extends RegistrationOptions {
    start?: T | (() => T);
    step: (total: T, ...values: any[]) => T | void;
    /** Given: registers a window function (usable with OVER). */
    inverse?: (total: T, ...dropped: any[]) => T | void;
    result?: (total: T) => unknown;
  }

  interface PragmaOptions {
    simple?: boolean;
  }

  interface Database {
    readonly name: string;
    readonly open: boolean;
    readonly inTransaction: boolean;
    readonly readonly: boolean;
    readonly memory: boolean;
    prepare<BindParams extends unknown[] = unknown[], Result = unknown>(
      source: string,
    ): Statement<BindParams, Result>;
    exec(source: string): this;
    execAsync(source: string): Promise<this>;
    transaction<F extends (...args: any[]) => any>(fn: F): Transaction<F>;
    pragma(source: string, options?: PragmaOptions): unknown;
    function(name: string, fn: (...args: any[]) => unknown): this;
    function(name: string, options: RegistrationOptions, fn: (...args: any[]) => unknown): this;
    aggregate<T>(name: string, options: AggregateOptions<T>): this;
    defaultSafeIntegers(toggle?: boolean): this;
    loadExtension(path: string, entryPoint?: string): this;
    /** Not defensive, and writes allowed while an iterator is open. */
    unsafeMode(toggle?: boolean): this;
    /** The database's bytes (an empty Buffer for an empty database). */
    serialize(options?: SerializeOptions): Buffer;
    /** An online backup to the file destination, stepped on the addon's threads. */
    backup(destination: string, options?: BackupOptions): Promise<BackupMetadata>;
    close(): this;
  }

  interface DatabaseConstructor {
    /** A Buffer from serialize() opens an in-memory database holding a copy of it. */
    new (filename?: string | Buffer, options?: Options): Database;
    (filename?: string | Buffer, options?: Options): never;
    prototype: Database;
    readonly Database: DatabaseConstructor;
    readonly SqliteError: SqliteErrorConstructor;
    /** Objects of the binding alive in the process, for leak checks. */
    liveObjects(): { environments: number; databases: number; statements: number; functions: number; queries: number };
  }

  interface SqliteError extends Error {
    name: 'SqliteError';
    /** The extended result code's name, e.g. 'SQLITE_CONSTRAINT_PRIMARYKEY'. */
    code: string;
  }
  interface SqliteErrorConstructor {
    new (message: string, code: string): SqliteError;
    readonly prototype: SqliteError;
  }
}

declare const Database: Database.DatabaseConstructor;
export = Database;
