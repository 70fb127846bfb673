/* loader.c - a main() for SQLite's own concurrency tests (mptest, threadtest3), compiled with
 * their main renamed to judge_main (-Dmain=judge_main). With JUDGE_SO set, it loads that
 * libsafeconc before the test starts, which makes `safeconc` the default VFS of the process
 * (and of every child mptest spawns, since they run this same main); without it the test runs
 * on stock SQLite. See run.sh. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int judge_main(int argc, char** argv);

int main(int argc, char** argv) {
  const char* so = getenv("JUDGE_SO");
  if (so != NULL && *so != '\0') {
    sqlite3* db = NULL;
    char* err = NULL;
    sqlite3_open(":memory:", &db);
    sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 1, NULL);
    if (sqlite3_load_extension(db, so, NULL, &err) != SQLITE_OK) {
      fprintf(stderr, "cannot load %s: %s\n", so, err != NULL ? err : "unknown error");
      return 99;
    }
    sqlite3_close(db);
    sqlite3_vfs* vfs = sqlite3_vfs_find(NULL);
    if (vfs == NULL || strcmp(vfs->zName, "safeconc") != 0) {
      fprintf(stderr, "safeconc is not the default VFS after loading %s\n", so);
      return 98;
    }
  }
  return judge_main(argc, argv);
}
