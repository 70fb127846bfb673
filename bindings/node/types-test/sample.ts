// Type-checked by tests/node/types.js (tsc --noEmit): a sample of the declared API.
import Database = require('safeconc-sqlite');

const db: Database.Database = new Database(':memory:', { readonly: false, fileMustExist: false, timeout: 1000 });
db.exec('CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT)');
const ins: Database.Statement<[string]> = db.prepare<[string]>('INSERT INTO t (name) VALUES (?)');
const info: Database.RunResult = ins.run('a');
const id: number | bigint = info.lastInsertRowid;
const row = db.prepare<[number], { id: number; name: string }>('SELECT * FROM t WHERE id = ?').get(1);
const name: string | undefined = row?.name;
const rows: unknown[] = db.prepare('SELECT * FROM t').raw().all();
for (const r of db.prepare('SELECT * FROM t').iterate()) void r;
db.function('twice', { deterministic: true }, (x: unknown) => Number(x) * 2);
db.function('one', () => 1);
db.aggregate('total', { start: 0, step: (acc: number, x: number) => acc + x, inverse: (acc: number, x: number) => acc - x });
const tx = db.transaction((n: number) => n + 1);
const n: number = tx.immediate(1);
const cols: Database.ColumnDefinition[] = db.prepare('SELECT 1 AS one').columns();
const simple: unknown = db.pragma('cache_size', { simple: true });
async function twins(): Promise<void> {
  const r: Database.RunResult = await ins.runAsync('b');
  const one: { name: string } | undefined = await db.prepare<[], { name: string }>('SELECT name FROM t').getAsync();
  const all: { name: string }[] = await db.prepare<[], { name: string }>('SELECT name FROM t').allAsync();
  for await (const x of db.prepare('SELECT name FROM t').iterateAsync()) void x;
  const same: Database.Database = await db.execAsync('SELECT 1');
  void [r, one, all, same];
}
try {
  db.prepare('SELEC');
} catch (e) {
  if (e instanceof Database.SqliteError) {
    const code: string = e.code;
    void code;
  }
}
const logged: string[] = [];
const verbose: Database.Database = new Database(':memory:', { verbose: (sql: string) => void logged.push(sql) });
const bytes: Buffer = db.serialize({ attached: 'main' });
const copy: Database.Database = new Database(bytes, { readonly: true });
const props: [string, boolean, boolean, boolean, boolean] = [copy.name, copy.open, copy.readonly, copy.memory, copy.inTransaction];
const stmt = db.prepare('SELECT 1');
const sprops: [Database.Database, string, boolean, boolean, boolean] = [stmt.database, stmt.source, stmt.reader, stmt.readonly, stmt.busy];
db.unsafeMode().unsafeMode(false).defaultSafeIntegers(true).defaultSafeIntegers();
async function extras(): Promise<void> {
  const done: Database.BackupMetadata = await db.backup('copy.db', {
    attached: 'main',
    progress: ({ totalPages, remainingPages }) => (totalPages - remainingPages > 100 ? 0 : 100),
  });
  void done.remainingPages;
  db.loadExtension('./ext.so').loadExtension('./ext.so', 'sqlite3_ext_init');
}
void [id, name, rows, n, cols, simple, twins, extras, verbose, props, sprops, Database.liveObjects().databases];
db.close();
