#!/usr/bin/env bash
# The Debian package (issue 15, item 2): builds postgresql-15-popularity from a clean copy of this
# tree with `dpkg-buildpackage -us -uc -b` (debian/, pg_buildext), checks its contents, installs it
# with `apt-get install ./postgresql-15-popularity_*.deb`, and runs the pg_regress and isolation
# suites (make installcheck) against a fresh server of the system PostgreSQL 15 started after the
# install, so the packaged library is the one loaded. Also checks that META.json (PGXN) and
# debian/changelog name the version of popularity.control.
#
# Installs into the system PostgreSQL tree (/usr/lib/postgresql/15, /usr/share/postgresql/15),
# the same files `make install` writes, and LEAVES THE PACKAGE INSTALLED: removing it would delete
# files other builds on this machine rely on; a later `make install` overwrites them (dpkg does not
# mind: unowned files are replaced silently, and make install'd files are owned by no package).
# Needs root (apt-get). Does not use test/run-all's server (started before the install, with the
# previous library preloaded). Takes about 2 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
fail() { echo "FAILED: $*" >&2; exit 1; }

PACKAGE=postgresql-15-popularity
unset CLUSTER_DIR PG_BIN # test/run-all's server is not ours to stop
SYSTEM_PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config # where the package installs, whatever PG_CONFIG says

# 1. One version: popularity.control's, also in debian/changelog and META.json.
version=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" popularity.control)
[ -n "$version" ] || fail "no default_version in popularity.control"
deb_version=$(dpkg-parsechangelog -l debian/changelog -SVersion)
[ "$deb_version" = "$version" ] ||
    fail "debian/changelog is at $deb_version, popularity.control at $version: add a changelog entry"
python3 - "$version" <<'PY' || fail "META.json"
import json, sys
version = sys.argv[1]
meta = json.load(open("META.json"))  # raises on invalid JSON
for key in ("name", "abstract", "version", "maintainer", "license", "provides", "meta-spec"):
    assert key in meta, f"META.json lacks {key}"
assert meta["meta-spec"]["version"] == "1.0.0", "META.json: meta-spec 1.0.0 expected"
assert meta["version"] == version, f"META.json version {meta['version']} != control {version}"
got = meta["provides"]["popularity"]["version"]
assert got == version, f"META.json provides.popularity.version {got} != control {version}"
assert "PostgreSQL" in meta["prereqs"]["runtime"]["requires"], "META.json: no PostgreSQL prereq"
print(f"META.json: valid, version {version}")
PY

# 2. Build from a clean copy (tracked and new files, no build outputs), in a temporary directory.
tmp=$(mktemp -d /tmp/popularity-deb.XXXXXX)
chmod 755 "$tmp" # apt's _apt user reads the .deb from here
cleanup() {
    [ -n "${CLUSTER_DIR:-}" ] && cluster_destroy
    rm -rf "$tmp"
}
trap cleanup EXIT
src=$tmp/popularity-$version
mkdir "$src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard |
        tar --null --ignore-failed-read -cf - -T - 2>/dev/null | tar -xf - -C "$src"
else
    tar --exclude=./build --exclude='*.o' --exclude='*.so' -cf - . | tar -xf - -C "$src"
fi
start=$SECONDS
(cd "$src" && MAKEFLAGS="-j$(nproc)" dpkg-buildpackage -us -uc -b) >"$tmp/build.log" 2>&1 || {
    tail -60 "$tmp/build.log"
    fail "dpkg-buildpackage"
}
deb=$(echo "$tmp/${PACKAGE}_${version}"_*.deb)
[ -f "$deb" ] || fail "no ${PACKAGE}_${version}_*.deb built: $(ls "$tmp")"
echo "built $(basename "$deb") in $((SECONDS - start)) s"

# 3. Contents: the library, the control file, every committed script (released versions and
# upgrades) and the assembled one of the current version; dependencies from the build.
dpkg-deb -c "$deb" | awk '{print $NF}' >"$tmp/contents"
expected=(./usr/lib/postgresql/15/lib/popularity.so ./usr/share/postgresql/15/extension/popularity.control
          "./usr/share/postgresql/15/extension/popularity--$version.sql")
for f in sql/popularity--*.sql; do
    expected+=("./usr/share/postgresql/15/extension/$(basename "$f")")
done
for f in "${expected[@]}"; do
    grep -qxF "$f" "$tmp/contents" || fail "$(basename "$deb") lacks $f"
done
depends=$(dpkg-deb -f "$deb" Depends)
grep -q 'postgresql-15' <<<"$depends" && grep -q 'libicu' <<<"$depends" ||
    fail "Depends lacks postgresql-15 or libicu: $depends"
echo "contents: ${#expected[@]} extension files present; Depends: $depends"

# 4. Install (reinstall when this version is already installed: the files may since have been
# overwritten by make install), and check that the files on disk are the package's.
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --reinstall -o DPkg::Lock::Timeout=300 \
    "$deb" >"$tmp/apt.log" 2>&1 || { tail -30 "$tmp/apt.log"; fail "apt-get install $deb"; }
[ "$(dpkg-query -W -f='${Status} ${Version}' "$PACKAGE")" = "install ok installed $version" ] ||
    fail "$PACKAGE $version is not installed: $(dpkg-query -W -f='${Status} ${Version}' "$PACKAGE" 2>&1)"
verify=$(dpkg --verify "$PACKAGE" 2>&1) || true
[ -z "$verify" ] || fail "installed files differ from the package: $verify"
echo "installed $PACKAGE $version; dpkg --verify: files match the package"

# Another build's `make install` into the same tree during the suite replaces the scripts
# CREATE EXTENSION reads (the server keeps the library it preloaded): the result is then not the
# package's, pass or fail. dpkg --verify prints one line per changed file (its status stays 0).
replaced_files() {
    local changed
    changed=$(dpkg --verify "$PACKAGE" 2>&1) || true
    [ -z "$changed" ] || fail "the package's files were replaced while the suite ran" \
        "(a concurrent make install into $($SYSTEM_PG_CONFIG --pkglibdir)?), so this run did not" \
        "test the package: $changed"
}

# 5. The suites against a fresh server of the system PostgreSQL, started now, with the packaged
# library preloaded; make installcheck only runs pg_regress here (it builds nothing).
export PG_CONFIG=$SYSTEM_PG_CONFIG
# shellcheck source=../lib/cluster.sh
source test/lib/cluster.sh
cluster_start "popularity.database = 'postgres, contrib_regression, isolation_regression'"
loaded=$(psql -X -At -c "SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries'")
available=$(psql -X -At -c "SELECT string_agg(version, ',' ORDER BY version) FROM pg_available_extension_versions WHERE name = 'popularity'")
echo "server $(psql -X -At -c 'SHOW server_version') preloads '$loaded'; popularity versions available: $available"
if ! make -C "$src" installcheck PG_CONFIG="$PG_CONFIG" >"$tmp/installcheck.log" 2>&1; then
    cat "$tmp/installcheck.log"
    [ -f "$src/regression.diffs" ] && head -200 "$src/regression.diffs"
    [ -f "$src/output_iso/regression.diffs" ] && head -200 "$src/output_iso/regression.diffs"
    replaced_files
    fail "make installcheck against the installed package"
fi
grep -E '\.\.\. |tests passed' "$tmp/installcheck.log"
replaced_files
[ ! -e "$src/popularity.so" ] || fail "installcheck built a library: the test would not be of the package"
echo "ok: $PACKAGE $version built, installed (left installed) and passing installcheck in $SECONDS s"
