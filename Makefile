# libsafeconc - the commands in README.md. CMake does the building underneath.
#   make            build build/libsafeconc.so
#   make test       build and run every test (ctest)
#   make test-asan  the same suite under AddressSanitizer + UBSan (build-asan/)
#   make test-tsan  the same suite under ThreadSanitizer (build-tsan/)
#   make lint       clang-format check + clang -Wthread-safety -Werror build (build-lint/)
#   make fuzz       libFuzzer targets (build-fuzz/), each for FUZZ_SECONDS (default 60)
#   make soak       SOAK_SECONDS (default 600) of threads, processes, kill -9, churn; not in CI
#   make bench      benchmarks, printed as tables
#   make judge      SQLite's mptest and threadtest3, stock vs libsafeconc (SQLITE_SRC=<tree>)
#   make demo       the main job (see README)
JOBS ?= 2
CMAKE_FLAGS ?=
CTEST_FLAGS ?= --output-on-failure -j$(JOBS)
SOURCES = $(shell git ls-files '*.cc' '*.h' 2>/dev/null || find include ext vfs tests bench -name '*.cc' -o -name '*.h')

.PHONY: all build deps test test-asan test-tsan lint format bench demo clean fuzz soak judge
FUZZ_SECONDS ?= 60
SOAK_SECONDS ?= 600

all: build

deps:
	@.ci/deps.sh check

build: deps
	@cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) >/dev/null
	@cmake --build build -j$(JOBS)

test: build
	ctest --test-dir build $(CTEST_FLAGS)

# The shell and python tests load the .so into uninstrumented programs (sqlite3, python3),
# which cannot host a sanitizer runtime; the sanitizer runs cover every C++ test, except that
# TSan skips crossproc_crash_test: its interceptor of pthread_mutex_timedlock does not record
# a lock acquired with EOWNERDEAD (a process killed holding the sidecar's robust mutex), so
# every repair is reported as an unlock of an unlocked mutex. ASan runs it; TSan covers the
# in-process parts of the cross-process code through crossproc_test.
test-asan: deps
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSAFECONC_SANITIZE=address $(CMAKE_FLAGS) >/dev/null
	@cmake --build build-asan -j$(JOBS)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --test-dir build-asan $(CTEST_FLAGS) -LE 'shell|python|node'

test-tsan: deps
	@cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSAFECONC_SANITIZE=thread $(CMAKE_FLAGS) >/dev/null
	@cmake --build build-tsan -j$(JOBS)
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan.supp" \
	  ctest --test-dir build-tsan $(CTEST_FLAGS) -LE 'shell|python|node' -E crossproc_crash_test

lint: deps
	clang-format --dry-run -Werror $(SOURCES)
	@cmake -S . -B build-lint -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
	  -DSAFECONC_THREAD_SAFETY=ON $(CMAKE_FLAGS) >/dev/null
	cmake --build build-lint -j$(JOBS)

format:
	clang-format -i $(SOURCES)

# libFuzzer needs clang; everything in build-fuzz/ is built with ASan+UBSan.
fuzz: deps
	@cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
	  -DCMAKE_CXX_COMPILER=clang++ -DSAFECONC_FUZZ=ON $(CMAKE_FLAGS) >/dev/null
	@cmake --build build-fuzz -j$(JOBS) --target fuzzers
	fuzz/run.sh build-fuzz $(FUZZ_SECONDS)

soak: build
	@cmake --build build -j$(JOBS) --target soak
	build/tests/soak $(SOAK_SECONDS)

bench: build
	@cmake --build build -j$(JOBS) --target benches
	@bench/run.sh build

# SQLite's own concurrency tests against this build; needs SQLite's source tree (see
# tests/judge/run.sh: `apt-get source sqlite3`), which is never downloaded here.
judge: build
	@test -n "$(SQLITE_SRC)" || { echo "make judge SQLITE_SRC=<SQLite source tree> (see tests/judge/run.sh)"; exit 2; }
	tests/judge/run.sh "$(SQLITE_SRC)" build/libsafeconc.so

demo: build
	@sql/demo.sh build

clean:
	rm -rf build build-asan build-tsan build-lint build-fuzz
