// backup.cc - db.backup(): SQLite's online backup, stepped on the pool.
//
// Every sqlite3_backup_* call takes the source connection's mutex, which a job of that
// connection may hold while it waits for the JS thread to run a UDF: on the JS thread they
// could deadlock with it. So init, each step and finish are jobs (JobKind::kBackup) queued on
// the source connection like its queries, in call order; between steps the JS thread runs
// (lib/database.js calls the progress callback there and decides the next step's size).
//
// Backup's fields are used by one kBackup job at a time (the JS layer awaits each before
// queuing the next), so the job hand-offs order them (see Job in common.h).
#include "common.h"

namespace scnode {

Backup::~Backup() {
  // Normally finished by its kBackupFinish job. Otherwise the source connection was closed
  // first (sqlite3_close_v2 left it a zombie until this finish), or the environment ends.
  if (b) sqlite3_backup_finish(b);
  if (dest_db) sqlite3_close(dest_db);
}

void RunBackup(Job* j) {
  Backup* bk = j->backup.get();
  sqlite3* src = j->db->db;
  switch (j->op) {
    case kBackupInit: {
      const int rc = sqlite3_open_v2(
          bk->dest.c_str(), &bk->dest_db,
          SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI | SQLITE_OPEN_FULLMUTEX,
          nullptr);
      if (rc != SQLITE_OK) {
        j->rc = bk->dest_db ? sqlite3_extended_errcode(bk->dest_db) : rc;
        j->error = std::string(bk->dest_db ? sqlite3_errmsg(bk->dest_db) : sqlite3_errstr(rc)) +
                   ": " + bk->dest;
        sqlite3_close(bk->dest_db);
        bk->dest_db = nullptr;
        return;
      }
      sqlite3_extended_result_codes(bk->dest_db, 1);
      bk->b = sqlite3_backup_init(bk->dest_db, "main", src, bk->attached.c_str());
      if (bk->b == nullptr) {
        j->rc = sqlite3_extended_errcode(bk->dest_db);
        j->error = sqlite3_errmsg(bk->dest_db);
      }
      return;
    }
    case kBackupStep: {
      if (bk->b == nullptr) {
        j->rc = SQLITE_MISUSE;
        j->error = "the backup is not running";
        return;
      }
      const int rc = sqlite3_backup_step(bk->b, j->batch);
      bk->total = sqlite3_backup_pagecount(bk->b);
      bk->remaining = sqlite3_backup_remaining(bk->b);
      j->done = rc == SQLITE_DONE;
      // BUSY and LOCKED: the source or destination is locked now; the next step retries.
      if (rc != SQLITE_OK && rc != SQLITE_DONE && (rc & 0xff) != SQLITE_BUSY &&
          (rc & 0xff) != SQLITE_LOCKED) {
        j->rc = rc;
        j->error = sqlite3_errmsg(bk->dest_db);
      }
      return;
    }
    default: {  // kBackupFinish
      int rc = SQLITE_OK;
      if (bk->b) rc = sqlite3_backup_finish(bk->b);
      bk->b = nullptr;
      if (rc != SQLITE_OK) {
        j->rc = sqlite3_extended_errcode(bk->dest_db);
        j->error = sqlite3_errmsg(bk->dest_db);
      }
      if (bk->dest_db) sqlite3_close(bk->dest_db);
      bk->dest_db = nullptr;
      return;
    }
  }
}

namespace {

void FinalizeBackup(napi_env, void* data, void*) {
  delete static_cast<std::shared_ptr<Backup>*>(data);
}

// _backupNew(destination, attached) -> handle (no SQLite call: the pool makes them).
napi_value BackupNew(napi_env env, napi_callback_info info) {
  try {
    size_t argc = 2;
    napi_value argv[2], out;
    NAPI_OK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
    auto bk = std::make_shared<Backup>();
    if (argc < 2 || !GetString(env, argv[0], &bk->dest) || !GetString(env, argv[1], &bk->attached))
      return ThrowType(env, "_backupNew(destination, attached)");
    auto* holder = new std::shared_ptr<Backup>(std::move(bk));
    if (napi_create_external(env, holder, FinalizeBackup, nullptr, &out) != napi_ok) {
      delete holder;
      return Pending(env);
    }
    return out;
  } catch (const std::bad_alloc&) {
    return ThrowError(env, "out of memory");
  }
}

}  // namespace

// db._backup(handle, op, pages) -> Promise<{ totalPages, remainingPages, done }>
napi_value DbBackup(napi_env env, napi_callback_info info) {
  try {
    size_t argc = 3;
    napi_value argv[3], self;
    NAPI_OK(napi_get_cb_info(env, info, &argc, argv, &self, nullptr));
    std::shared_ptr<Db> d = UnwrapShared<Db>(env, self);
    if (!d) return ThrowType(env, "not a Database");
    void* p = nullptr;
    if (argc < 3 || napi_get_value_external(env, argv[0], &p) != napi_ok || p == nullptr)
      return ThrowType(env, "_backup(handle, op, pages)");
    int32_t op = 0, pages = 0;
    napi_get_value_int32(env, argv[1], &op);
    napi_get_value_int32(env, argv[2], &pages);
    // Steps stop when close() was called (as better-sqlite3 aborts them); the finish that
    // follows still runs while the connection waits for its jobs to end.
    const bool open = op == kBackupFinish ? d->db != nullptr : d->Open();
    if (!open || d->st->exiting) return ThrowType(env, "The database connection is not open");
    auto j = std::make_unique<Job>();
    j->st = d->st;
    j->db = d;
    j->kind = JobKind::kBackup;
    j->op = op;
    j->batch = pages;
    j->backup = *static_cast<std::shared_ptr<Backup>*>(p);
    return QueueJob(env, std::move(j));
  } catch (const std::bad_alloc&) {
    return ThrowError(env, "out of memory");
  }
}

napi_value InitBackup(napi_env env, napi_value exports) {
  napi_value fn;
  NAPI_OK(napi_create_function(env, "_backupNew", NAPI_AUTO_LENGTH, BackupNew, nullptr, &fn));
  NAPI_OK(napi_set_named_property(env, exports, "_backupNew", fn));
  return exports;
}

}  // namespace scnode
